"""Backends run through Beam's RunInference in a TestPipeline, with rejects routed by `is_reject`."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from mmdata.models.base import is_reject
from mmdata.models.canny import CannyEdgeHandler
from mmdata.models.u2net import U2NetMaskHandler
from mmdata.runner import LocalDirectRunner

from .conftest import SETS, outputs


def test_u2net_through_runinference_with_rejects(icons, u2net) -> None:  # noqa: ANN001
    keys = [f"{s}-{i}" for i, s in enumerate(SETS[:2])]
    elements = [(k, icons[("star", s)]) for k, s in zip(keys, SETS, strict=False)]
    elements.append(("tiny", np.zeros((3, 3, 3), np.uint8)))
    elements.append(("junk", np.zeros((4, 4, 7), np.uint8)))
    # expected masks from the handler directly (U2-Netp, not alpha)
    expected = {
        k: m
        for (k, _), m in zip(
            elements, outputs(u2net, [img for _, img in elements[:2]]), strict=False
        )
    }
    handler = KeyedModelHandler(U2NetMaskHandler(use_alpha=False, max_batch_size=2, threads=1))

    def summarise(kv):  # noqa: ANN001, ANN202
        key, result = kv
        if is_reject(result):
            return key, "reject", result.inference.reason
        close = np.allclose(result.inference, expected[key], atol=1e-6)
        return key, result.model_id, bool(close)

    with TestPipeline(runner=LocalDirectRunner()) as p:
        results = p | beam.Create(elements) | RunInference(handler)
        parts = results | beam.Partition(lambda kv, n: int(is_reject(kv[1])), 2)
        assert_that(
            parts[0] | "ok" >> beam.Map(summarise),
            equal_to([(k, "u2netp", True) for k in keys]),
            label="ok",
        )
        assert_that(
            parts[1] | "rej" >> beam.Map(summarise),
            equal_to([("tiny", "reject", "too_small"), ("junk", "reject", "bad_image")]),
            label="rejects",
        )


def test_canny_batches_via_runinference_equal_direct_calls(photos) -> None:  # noqa: ANN001
    names = sorted(photos)
    h = CannyEdgeHandler(min_batch_size=2, max_batch_size=2)
    assert h.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 2}
    direct = {n: outputs((h, h.load_model()), [photos[n]])[0] for n in names}
    with TestPipeline(runner=LocalDirectRunner()) as p:
        out = (
            p
            | beam.Create([(n, photos[n]) for n in names])
            | RunInference(KeyedModelHandler(h))
            | beam.Map(lambda kv: (kv[0], int(kv[1].inference.sum()), kv[1].inference.shape))
        )
        assert_that(out, equal_to([(n, int(direct[n].sum()), direct[n].shape) for n in names]))


def test_loaded_models_can_be_shared_by_beam(
    hed, u2net, effnet, minilm, style_vec, style_transfer
) -> None:  # noqa: ANN001
    """RunInference keeps the model in `apache_beam.utils.shared`, which holds a weak reference."""
    import weakref

    for _, model in (hed, u2net, effnet, minilm, style_vec, style_transfer):
        assert weakref.ref(model)() is model
    assert weakref.ref(CannyEdgeHandler().load_model())
