"""Fixtures for the LLM template tests: a copy of the templates folder, a private response cache,
and (session-wide) the real local llama.cpp server on a free loopback port."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def _seed_template_files() -> dict[str, str]:
    """The text of each seed-only template file, built once (loading the shipped files, thousands
    of entries each, takes seconds)."""
    from mmdata.llm import store

    out = {}
    for path in sorted((REPO / "templates").glob("*.yaml")):
        tf = store.load_path(path)
        tf.templates = [t for t in tf.with_status("accepted") if t.source == "seed"]
        out[path.name] = store.dumps(tf)
    return out


@pytest.fixture
def templates_copy(tmp_path: Path, _seed_template_files: dict[str, str]) -> Path:
    """The repository's seed templates copied to a temporary folder (tests write there); grown,
    candidate and rejected entries are left out, so tests see the same prompts whatever the
    shipped set holds."""
    dst = tmp_path / "templates"
    dst.mkdir()
    for name, text in _seed_template_files.items():
        (dst / name).write_text(text, encoding="utf-8")
    return dst


@pytest.fixture(autouse=True)
def _restore_logging():
    """`mmdata.cli.main` configures logging onto the (captured) stderr of the test that calls it;
    put the root handlers back so later tests do not write to a closed stream, and the levels
    `templates generate` sets on the HTTP client's loggers, so a later `-v` run logs them."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in ("httpx", "httpx2", "openai")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in quiet.items():
        logging.getLogger(name).setLevel(lvl)


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
