"""Fixtures for the LLM template tests: a copy of the templates folder, a private response cache,
and (session-wide) the real local llama.cpp server on a free loopback port."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def templates_copy(tmp_path: Path) -> Path:
    """The repository's templates/ copied to a temporary folder (tests write there)."""
    dst = tmp_path / "templates"
    shutil.copytree(REPO / "templates", dst)
    return dst


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "llm-cache"


@pytest.fixture(scope="session")
def local_llm():
    """The bundled local server (Gemma 3 270M via llama.cpp), started once for the session."""
    from mmdata.llm.server import LocalLLMServer

    srv = LocalLLMServer()
    srv.start(timeout=120)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def embedder():
    """The offline MiniLM sentence encoder, loaded once."""
    from mmdata.llm.validate import Embedder

    return Embedder()
