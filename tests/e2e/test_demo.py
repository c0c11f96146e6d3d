"""The demo job end to end: real Beam runners, schemas, accounting, determinism, resume, bad inputs."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import imagegen
import jsonschema
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from mmdata.config import DemoConfig, QualityConfig, ShardConfig
from mmdata.core.keys import stable_hash
from pipelines import demo

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = {
    p.name.split(".")[0]: json.loads(p.read_text()) for p in (ROOT / "schemas").glob("*.json")
}


def run_demo(inp: Path, out: Path, beam_args=(), overwrite=False, maxcount=8):
    cfg = DemoConfig(
        input=str(inp),
        output=str(out),
        shards=ShardConfig(maxcount=maxcount),
        quality=QualityConfig(min_side=24),
    )
    demo.run(cfg, list(beam_args), overwrite=overwrite)
    return json.loads((out / "manifest.json").read_text())


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix in (".tar", ".parquet")
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str], dict[str, str]]:
    root = tmp_path_factory.mktemp("corpus")
    good = imagegen.good_folder(root / "good")
    bad = imagegen.bad_folder(root / "bad")
    odd = root / "odd"
    odd.mkdir()
    for name, (data, _) in imagegen.odd_mode_images().items():
        (odd / name).write_bytes(data)
        (odd / (name.rsplit(".", 1)[0] + ".txt")).write_text(f"an odd {name} image")
    return root, good, bad


@pytest.fixture(scope="module")
def direct_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("direct") / "ds"
    return out, run_demo(corpus[0], out)


def test_manifest_and_records_match_schemas(direct_run):
    out, m = direct_run
    jsonschema.validate(m, SCHEMAS["manifest"])
    samples = list(wds.WebDataset([str(out / s["name"]) for s in m["shards"]], shardshuffle=False))
    assert len(samples) == m["totals"]["samples"] > 0
    for s in samples:
        meta = json.loads(s["json"])
        jsonschema.validate(meta, SCHEMAS["instruction_sample"])
        assert meta["key"] == s["__key__"] and s[meta["target"]["field"]]
    for shard in m["shards"]:
        for row in pq.read_table(out / shard["parquet"]).to_pylist():
            row.pop("sort_key")
            jsonschema.validate(row, SCHEMAS["shard_row"])
    for row in pq.read_table(out / "rejects.parquet").to_pylist():
        jsonschema.validate(row, SCHEMAS["reject"])


def test_accounting_and_every_bad_input_rejected(corpus, direct_run):
    _, good, bad = corpus
    out, m = direct_run
    for stage, c in m["counts"].items():
        assert c["input"] == c["kept"] + sum(c["rejected"].values()), stage
    chain = m["stages"]
    for a, b in zip(chain, chain[1:], strict=False):
        assert m["counts"][a]["kept"] == m["counts"][b]["input"]
    rejects = {
        (r["key"].removeprefix("bad_"), r["reason"])
        for r in pq.read_table(out / "rejects.parquet").to_pylist()
    }
    for key, reason in bad.items():
        assert (key, reason) in rejects, (key, reason)
    n_odd = len(imagegen.odd_mode_images())
    # +2: the two images whose names slug to one key ("dup key/a.png", "dup_key/a.png"), both kept
    assert m["counts"]["ingest"]["input"] == len(good) + n_odd + len(bad) + 2
    assert m["totals"]["samples"] == len(good) + n_odd + 2
    keys = set()
    for s in wds.WebDataset([str(out / s["name"]) for s in m["shards"]], shardshuffle=False):
        keys.add(json.loads(s["json"])["target"]["source_key"])
    assert {f"odd_{n.rsplit('.', 1)[0]}" for n in imagegen.odd_mode_images()} <= keys
    assert {"good_" + k for k in good} <= keys
    assert {k for k in keys if k.startswith("bad_dup_key_a")} == {
        "bad_dup_key_a",
        f"bad_dup_key_a_{stable_hash('bad/dup key/a', n=8)}",  # "dup_key/a" is its key as written
    }


def test_rerun_skips_and_overwrite_rebuilds(corpus, direct_run, tmp_path, caplog):
    out, m = direct_run
    work = tmp_path / "ds"
    shutil.copytree(out, work)
    before = {p.name: p.stat().st_mtime_ns for p in work.iterdir()}
    with caplog.at_level(logging.INFO, logger="mmdata"):
        m2 = run_demo(corpus[0], work)
    n = len(m["shards"])
    assert (
        f"0 shards written, {n} already complete" in caplog.text
    )  # the rerun says what it skipped
    after = {p.name: p.stat().st_mtime_ns for p in work.iterdir()}
    assert {k: v for k, v in m2.items() if k != "config"} == {
        k: v for k, v in m.items() if k != "config"
    }
    assert all(
        after[n] == before[n]
        for n in before
        if n.endswith((".tar", ".parquet")) and n != "rejects.parquet"
    )
    run_demo(corpus[0], work, overwrite=True)
    assert all(after[p.name] != p.stat().st_mtime_ns for p in work.glob("*.tar"))
    assert shard_bytes(work) == shard_bytes(out)


def test_multiprocess_runner_same_bytes(corpus, direct_run, tmp_path, capfd):
    from mmdata.beam_worker import BENIGN

    out, m = direct_run
    m2 = run_demo(
        corpus[0],
        tmp_path / "mp",
        ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    )
    assert m2["shards"] == m["shards"]
    assert shard_bytes(tmp_path / "mp") == shard_bytes(out)
    assert (tmp_path / "mp" / "manifest.json").read_bytes() != b""
    # the worker processes' stderr: mmdata's progress lines, none of Beam's start-up chatter
    err = capfd.readouterr().err
    assert "INFO mmdata: " in err and "shards written" in err, err[-2000:]
    assert not [line for line in err.splitlines() if any(b in line for b in BENIGN)], err[-2000:]


@pytest.mark.slow
def test_dask_distributed_runner_same_bytes(corpus, direct_run, tmp_path):
    from distributed import LocalCluster

    out, m = direct_run
    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        m2 = run_demo(
            corpus[0],
            tmp_path / "dask",
            [
                "--runner=apache_beam.runners.dask.dask_runner.DaskRunner",
                f"--dask_client_address={cluster.scheduler_address}",
            ],
        )
    assert m2["counts"] == m["counts"] and m2["shards"] == m["shards"]
    assert shard_bytes(tmp_path / "dask") == shard_bytes(out)


def test_cli_demo_and_inspect(corpus, tmp_path):
    out = tmp_path / "cli"
    cmd = [
        sys.executable,
        "-m",
        "mmdata.cli",
        "demo",
        "--input",
        str(corpus[0] / "good"),
        "--output",
        str(out),
        "--quality.min_side",
        "24",
        "--shards.maxcount",
        "5",
        "--direct_num_workers=1",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"Output written to: {out}" in res.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["config"]["shards"]["maxcount"] == 5 and all(s["samples"] <= 5 for s in m["shards"])
    res = subprocess.run(
        [sys.executable, "-m", "mmdata.cli", "inspect", str(out)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-2000:]
    page = (out / "inspect.html").read_text()
    assert (
        page.count("data:image/png;base64") >= 5
        and "Per-stage counts" in page
        and "quality" in page
    )
    bad = subprocess.run(
        [sys.executable, "-m", "mmdata.cli", "demo", "--quality.min_sid", "3"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0


def test_killed_run_leaves_no_partial_shard(corpus, direct_run, tmp_path):
    """SIGKILL the job as soon as shards start to appear; what is visible must be complete."""
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "mmdata.cli",
        "demo",
        "--input",
        str(corpus[0]),
        "--output",
        str(out),
        "--quality.min_side",
        "24",
        "--shards.maxcount",
        "1",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and any(p.suffix == ".tar" or ".tmp-" in p.name for p in out.iterdir()):
            break
        time.sleep(0.005)
    if proc.poll() is None:
        import os

        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert out.exists()
    for pqf in out.glob("0*.parquet"):
        tar = out / (pqf.stem + ".tar")
        assert tar.exists()
        meta = pq.read_schema(pqf).metadata
        import hashlib

        assert hashlib.sha256(tar.read_bytes()).hexdigest() == meta[b"mmdata.tar_sha256"].decode()
    for tar in out.glob("0*.tar"):
        with tarfile.open(tar) as t:
            t.getmembers()  # complete archives only: renamed after being fully written
    # resuming finishes the job with the same bytes as an uninterrupted run
    run_demo(corpus[0], out, maxcount=1)
    clean = tmp_path / "clean"
    run_demo(corpus[0], clean, maxcount=1)
    assert shard_bytes(out) == shard_bytes(clean)
    assert not list(out.glob("*.tmp-*"))


def test_default_runner_never_tries_prism(corpus, tmp_path, monkeypatch):
    """Beam's DirectRunner first tries PrismRunner, which downloads a binary from GitHub at run
    time; mmdata's DirectRunner (the default) runs on the FnApiRunner without that try."""
    from apache_beam.runners.portability import prism_runner
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    from mmdata.runner import LocalDirectRunner, local_runner, pipeline_options

    tried: list[str] = []
    monkeypatch.setattr(
        prism_runner.PrismRunner, "run_pipeline", lambda *a, **k: tried.append("prism")
    )
    ran = []
    original = fn_runner.FnApiRunner.run_pipeline

    def spy(self, pipeline, options):  # noqa: ANN001, ANN202
        ran.append(type(self).__name__)
        return original(self, pipeline, options)

    monkeypatch.setattr(fn_runner.FnApiRunner, "run_pipeline", spy)
    # and, as Beam's own DirectRunner in batch, no test round trip of the graph through the protos
    import apache_beam as beam

    round_trips = []
    original_from = beam.Pipeline.from_runner_api

    def from_spy(*a, **k):  # noqa: ANN002, ANN003, ANN202
        round_trips.append(1)
        return original_from(*a, **k)

    monkeypatch.setattr(beam.Pipeline, "from_runner_api", staticmethod(from_spy))
    m = run_demo(corpus[0], tmp_path / "ds")
    assert tried == [] and ran == ["FnApiRunner"] and m["totals"]["samples"] > 0
    assert round_trips == []
    assert isinstance(local_runner(pipeline_options([])), LocalDirectRunner)
    assert isinstance(local_runner(pipeline_options(["--runner=direct"])), LocalDirectRunner)
    assert local_runner(pipeline_options(["--runner=PrismRunner"])) is None


def test_local_runner_sends_streaming_only_primitives_to_the_bundle_runner(monkeypatch):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
    from apache_beam.testing.test_stream import TestStream

    from mmdata.runner import LocalDirectRunner

    used = []
    monkeypatch.setattr(
        BundleBasedDirectRunner, "run_pipeline", lambda self, p, o: used.append("bundle")
    )
    opts = PipelineOptions()
    opts.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(runner=LocalDirectRunner(), options=opts)
    _ = p | TestStream().add_elements([1, 2]).advance_watermark_to_infinity() | beam.Map(str)
    p.run()
    assert used == ["bundle"]
