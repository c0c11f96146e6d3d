"""The main job: ingest -> quality filter -> txt2img instruction samples -> shards + manifest + rejects."""

from __future__ import annotations

import apache_beam as beam

from mmdata.config import DemoConfig, to_dict
from mmdata.core.templates import Template, load_templates
from mmdata.io.paths import use_options
from mmdata.io.readers import read_source
from mmdata.io.shards import WriteShards, claimed_output
from mmdata.runner import check_runner, run_pipeline
from mmdata.sample import sample_corpus_dir
from mmdata.transforms.ingest import Ingest
from mmdata.transforms.instructions import SAMPLE_ROW_SCHEMA, BuildTxt2Img, sample_to_item
from mmdata.transforms.manifest import WriteManifest, no_input_errors
from mmdata.transforms.quality import QualityFilter

STAGES = ["ingest", "unique_keys", "quality", "txt2img"]


def build(
    p: beam.Pipeline,
    cfg: DemoConfig,
    overwrite: bool = False,
    reader: beam.PTransform | None = None,
    templates: list[Template] | None = None,
):
    """Wire the demo job into `p`; returns the manifest PCollection. `reader` and `templates` are the
    source reader and txt2img templates when the caller already made them (`run` does, to check the
    input and templates before it touches the output)."""
    source = cfg.input or str(sample_corpus_dir())
    if templates is None:
        templates = load_templates("txt2img", cfg.templates_dir or None)
    if reader is None:
        reader = read_source(source, cfg.input_kind, cfg.ingest, cfg.output)
    ing = p | "Read" >> reader | "Ingest" >> Ingest(cfg.ingest)
    qual = ing["kept"] | "Quality" >> QualityFilter(cfg.quality)
    t2i = qual["kept"] | "Txt2Img" >> BuildTxt2Img(templates, cfg.seed)
    samples = t2i["kept"]
    shards = (
        samples
        | "ToItems" >> beam.Map(sample_to_item)
        | "Shards"
        >> WriteShards(
            cfg.output, cfg.shards.maxcount, cfg.shards.maxsize, SAMPLE_ROW_SCHEMA, overwrite
        )
    )
    tasks = (
        samples
        | "Tasks" >> beam.Map(lambda s: s.task)
        | "CountTasks" >> beam.combiners.Count.PerElement()
    )
    counts = (ing["counts"], qual["counts"], t2i["counts"]) | "Counts" >> beam.Flatten()
    rejects = (ing["rejects"], qual["rejects"], t2i["rejects"]) | "Rejects" >> beam.Flatten()
    config = {**to_dict(cfg), "input": source}
    return (counts, shards, rejects, tasks) | "Manifest" >> WriteManifest(
        cfg.output, "demo", config, STAGES, input_path=source
    )


def run(
    cfg: DemoConfig, beam_args: list[str] | None = None, overwrite: bool = False, test_pipeline=None
) -> None:
    use_options(beam_args)  # an object store's endpoint and keys reach the input and output checks
    if test_pipeline is None:
        check_runner(beam_args)  # a runner that cannot run here fails before the output exists
    source = cfg.input or str(sample_corpus_dir())
    # the checks that can refuse the run (input missing or ambiguous, templates missing or invalid)
    # come before prepare_output creates and marks the output folder
    reader = read_source(source, cfg.input_kind, cfg.ingest, cfg.output)
    templates = load_templates("txt2img", cfg.templates_dir or None)
    # a run that fails before it writes anything removes the marker (and folder) it created
    with claimed_output(cfg.output, source, cfg.input_kind), no_input_errors():
        run_pipeline(
            lambda p: build(p, cfg, overwrite, reader=reader, templates=templates),
            beam_args,
            test_pipeline,
        )
