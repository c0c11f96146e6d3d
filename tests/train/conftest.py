from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from mmdata.train.config import TextConfig
from mmdata.train.text import TextEncoder

sys.path.insert(0, str(Path(__file__).parent))
from trainfix import write_dataset  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _deterministic_single_thread():
    """One intra-op thread (2 threads on 2 busy shared cores are ~10x slower) and deterministic ops."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)


@pytest.fixture(scope="session")
def text_encoder() -> TextEncoder:
    """The real frozen MiniLM (offline package), loaded once for the whole session."""
    enc = TextEncoder(TextConfig(max_tokens=32))
    assert enc.dim == 384
    return enc


@pytest.fixture(scope="session")
def stage1_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(
        tmp_path_factory.mktemp("stage1"), n=48, per_shard=12, tasks=("retrieval",)
    )


@pytest.fixture(scope="session")
def stage2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(
        tmp_path_factory.mktemp("stage2"),
        n=48,
        per_shard=12,
        tasks=("txt2img", "edge2img", "mask2img", "retrieval"),
        seed=1,
    )
