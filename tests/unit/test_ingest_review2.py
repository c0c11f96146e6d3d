"""Small pieces behind the second ingest review: strict-JSON metadata, manifest key prefixes, the
up-front manifest check of a glob, repeated tar members."""

from __future__ import annotations

import io
import json
import math
import tarfile
from types import SimpleNamespace

import imagegen
import pytest

from mmdata.config import IngestConfig
from mmdata.core.jsonvalues import json_safe
from mmdata.io.readers import _manifest_base, _ManifestRowFn, _TarFn, check_manifests


def test_json_safe_maps_every_value_to_strict_json():
    value = {
        "nan": math.nan,
        "inf": [math.inf, -math.inf, 1.5],
        "text": b"caf\xc3\xa9",
        "blob": b"\xff\x00",
        "tuple": (1, True, None),
        1: "int key",
        "nested": {"x": float("nan")},
    }
    out = json_safe(value)
    assert out == {
        "nan": None,
        "inf": [None, None, 1.5],
        "text": "café",
        "blob": "/wA=",
        "tuple": [1, True, None],
        "1": "int key",
        "nested": {"x": None},
    }
    json.dumps(out, allow_nan=False)  # strict
    ok = {"a": [1, 2.5, "s", None, True], "b": {"c": "d"}}
    assert json_safe(ok) == ok and json.dumps(json_safe(ok)) == json.dumps(ok)


def test_manifest_keys_are_relative_to_the_inputs_folder():
    assert _manifest_base("/d/a/m.parquet", "/d/a/m.parquet") == "/d/a"
    assert _manifest_base("/d/*/m.parquet", "/d/*/m.parquet") == "/d"
    assert _manifest_base("/d/part-*.parquet", "/d/part-*.parquet") == "/d"
    assert _manifest_base("/d/p [1].csv", "/d/p [[]1].csv") == "/d"  # a literal name, escaped
    fn = _ManifestRowFn(IngestConfig(), "/d")
    assert fn._stem("/d/a/data.parquet") != fn._stem("/d/b/data.parquet")
    assert fn._stem("/d/data.parquet") == "data"  # a single manifest keeps its keys


def test_a_glob_is_refused_up_front_only_when_no_manifest_in_it_is_usable(tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"not parquet")
    (tmp_path / "b.csv").write_text("path,caption\nx.png,a caption\n")
    check_manifests(str(tmp_path / "*"), IngestConfig())  # b.csv is usable: a.parquet is a reject
    (tmp_path / "b.csv").write_text("path\nx.png\n")
    with pytest.raises(ValueError, match=r"none of the 2 manifests .* the first: .*a\.parquet"):
        check_manifests(str(tmp_path / "*"), IngestConfig())


def test_tar_members_repeating_a_field_are_rejects_with_distinct_sources(tmp_path):
    png = imagegen.encode(imagegen.shape(1))
    path = tmp_path / "00000.tar"
    with tarfile.open(path, "w") as tf:
        for name, data in [("k.png", png), ("k.png", png), ("k.txt", b"a shape"), ("k.txt", b"x")]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    meta = SimpleNamespace(path=str(path), size_in_bytes=path.stat().st_size)
    recs = list(_TarFn(IngestConfig()).process(meta))
    assert [r.error[0] if r.error else None for r in recs] == [
        None,
        "duplicate_member",
        "duplicate_member",
    ]
    assert recs[0].caption == b"a shape"  # the first member of a field is the one read
    assert len({r.source for r in recs}) == 3
