"""Technical quality filter stage."""

from __future__ import annotations

import dataclasses

import apache_beam as beam

from mmdata.config import QualityConfig
from mmdata.core.image import load_pixels
from mmdata.core.quality import check_quality, quality_metrics
from mmdata.core.reasons import Reason
from mmdata.records import ImageTextPair
from mmdata.transforms.stage import Stage


def filter_quality(pair: ImageTextPair, cfg: QualityConfig) -> ImageTextPair | Reason:
    """Keep a pair whose image passes the technical checks; metrics go to metadata["quality"]."""
    metrics = quality_metrics(load_pixels(pair.image))
    if reason := check_quality(metrics, cfg):
        return reason
    meta = {**pair.metadata, "quality": {k: round(v, 3) for k, v in metrics.items()}}
    return dataclasses.replace(pair, metadata=meta)


class QualityFilter(beam.PTransform):
    """Pairs -> {"kept", "rejects", "counts"} of stage `quality`."""

    def __init__(self, cfg: QualityConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, pairs):
        cfg = self.cfg
        return pairs | "Quality" >> Stage("quality", lambda p: filter_quality(p, cfg))
