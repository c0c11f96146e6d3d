"""`mmdata ingest`: sources -> checked image-text pairs as WebDataset shards (+ manifest, rejects)."""

from __future__ import annotations

import apache_beam as beam

from mmdata.config import IngestJobConfig, to_dict
from mmdata.io.paths import use_options
from mmdata.io.readers import read_source
from mmdata.io.shards import WriteShards, claimed_output
from mmdata.runner import check_runner, run_pipeline
from mmdata.transforms.ingest import Ingest
from mmdata.transforms.instructions import PAIR_ROW_SCHEMA, pair_to_item
from mmdata.transforms.manifest import WriteManifest, no_input_errors

STAGES = ["ingest", "unique_keys"]


def build(
    p: beam.Pipeline,
    cfg: IngestJobConfig,
    overwrite: bool = False,
    reader: beam.PTransform | None = None,
):
    """Wire the ingest job into `p`; returns the manifest PCollection. `reader` is the source reader
    when the caller already made it (`run` does, to check the input before it touches the output)."""
    if reader is None:
        reader = read_source(cfg.input, cfg.input_kind, cfg.ingest, cfg.output)
    ing = p | "Read" >> reader | "Ingest" >> Ingest(cfg.ingest)
    pairs = ing["kept"]
    shards = (
        pairs
        | "ToItems" >> beam.Map(pair_to_item)
        | "Shards"
        >> WriteShards(
            cfg.output, cfg.shards.maxcount, cfg.shards.maxsize, PAIR_ROW_SCHEMA, overwrite
        )
    )
    # One kind of sample: the task count is the shards' sample count (no pass over the pairs).
    tasks = shards | "Tasks" >> beam.Map(lambda s: ("pair", s.samples))
    return (ing["counts"], shards, ing["rejects"], tasks) | "Manifest" >> WriteManifest(
        cfg.output, "ingest", to_dict(cfg), STAGES, mixture={}, input_path=cfg.input
    )


def run(
    cfg: IngestJobConfig,
    beam_args: list[str] | None = None,
    overwrite: bool = False,
    test_pipeline=None,
) -> None:
    use_options(beam_args)  # an object store's endpoint and keys reach the input and output checks
    if test_pipeline is None:
        check_runner(beam_args)  # a runner that cannot run here fails before the output exists
    # the input checks that can refuse the run (missing, ambiguous kind) come before prepare_output
    # creates and marks the output folder
    reader = read_source(cfg.input, cfg.input_kind, cfg.ingest, cfg.output)
    # a run that fails before it writes anything removes the marker (and folder) it created
    with claimed_output(cfg.output, cfg.input, cfg.input_kind), no_input_errors():
        run_pipeline(lambda p: build(p, cfg, overwrite, reader=reader), beam_args, test_pipeline)
