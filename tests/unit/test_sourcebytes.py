"""Image bytes passed by reference: pickling, re-reading, changed sources, and the readers that make them."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib

import apache_beam as beam
import imagegen
import pyarrow.parquet as pq
import pytest
from apache_beam.coders import typecoders

from mmdata.config import IngestConfig, IngestJobConfig
from mmdata.io.readers import _read_bytes, _TarFn
from mmdata.io.sourcebytes import SourceBytes, SourceChangedError, clear_cache
from mmdata.records import ImageTextPair
from pipelines import ingest


def _file(tmp_path, data: bytes, name: str = "a.jpg"):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_pickles_as_a_reference_and_rereads_the_same_bytes(tmp_path):
    data = bytes(range(256)) * 200
    path = _file(tmp_path, b"head" + data)
    sb = SourceBytes(data, path, offset=4)
    blob = pickle.dumps(sb, protocol=pickle.HIGHEST_PROTOCOL)
    assert len(blob) < 400 < len(data)  # the bytes themselves do not travel
    back = pickle.loads(blob)
    assert type(back) is SourceBytes and back == data and back.offset == 4
    assert back.crc32 == zlib.crc32(data)


def test_beam_default_coder_carries_the_reference_inside_a_record(tmp_path):
    data = b"\xff\xd8" + b"x" * 50_000
    path = _file(tmp_path, data)
    pair = ImageTextPair(
        key="k", image=SourceBytes(data, path), format="jpeg", caption="c", source=path
    )
    coder = typecoders.registry.get_coder(
        object
    )  # what Beam uses for records without a typed coder
    encoded = coder.encode(pair)
    assert len(encoded) < 2_000
    back = coder.decode(encoded)
    assert back.image == data and isinstance(back.image, SourceBytes)


def test_a_source_changed_or_removed_while_the_job_runs_is_a_clear_error(tmp_path):
    path = _file(tmp_path, b"original bytes of an image")
    blob = pickle.dumps(SourceBytes(b"original bytes of an image", path))
    clear_cache()  # as in another process: the region must be read again
    _file(tmp_path, b"ORIGINAL bytes of an image")  # same length, other bytes
    with pytest.raises(SourceChangedError, match=r"a\.jpg: bytes 0\.\.26 changed"):
        pickle.loads(blob)
    (tmp_path / "a.jpg").unlink()
    with pytest.raises(SourceChangedError, match="could not be read again"):
        pickle.loads(blob)


def test_a_file_replaced_by_one_with_the_same_bytes_is_caught_by_its_stamp(tmp_path):
    """What the readers record (device, inode, size, mtime) catches a swap the CRC alone could miss
    (a replacement made to have the same length and CRC)."""
    path = _file(tmp_path, b"image bytes")
    data, _ = _read_bytes(path, None, 1 << 20, by_reference=True)
    assert data.stamp is not None
    blob = pickle.dumps(data)
    clear_cache()
    assert pickle.loads(blob) == b"image bytes"  # untouched: fine
    clear_cache()
    other = tmp_path / "other"
    other.write_bytes(b"image bytes")
    os.replace(other, path)  # same bytes, another file
    with pytest.raises(SourceChangedError, match="modified or replaced"):
        pickle.loads(blob)


def test_regions_pickled_in_this_process_are_not_read_again(tmp_path, monkeypatch):
    import mmdata.io.sourcebytes as sb

    clear_cache()
    datas = [bytes([i]) * 1000 for i in range(4)]
    paths = [_file(tmp_path, d, f"{i}.jpg") for i, d in enumerate(datas)]
    objs = [SourceBytes(d, p) for d, p in zip(datas, paths, strict=True)]
    blobs = [pickle.dumps(o) for o in objs]
    for p in paths:  # gone from disk: only the cache can answer
        (tmp_path / p).unlink()
    assert [pickle.loads(b) for b in blobs] == datas
    assert pickle.loads(blobs[0]) is objs[0]
    # bounded: the least recently pickled region goes first, and is then read from disk again
    monkeypatch.setattr(sb, "CACHE_BYTES", 2500)
    clear_cache()
    blobs = [pickle.dumps(o) for o in objs]
    assert pickle.loads(blobs[3]) is objs[3] and pickle.loads(blobs[2]) is objs[2]
    with pytest.raises(SourceChangedError):
        pickle.loads(blobs[0])


def test_readers_make_references_only_for_local_files_when_enabled(tmp_path):
    path = _file(tmp_path, b"some image bytes")
    data, err = _read_bytes(path, None, 1 << 20, by_reference=True)
    assert err is None and isinstance(data, SourceBytes) and data.path == path
    data, err = _read_bytes(path, None, 1 << 20, by_reference=False)
    assert err is None and type(data) is bytes
    data, err = _read_bytes(path, None, 3, by_reference=True)
    assert data is None and err[0] == "file_too_large"
    # a compressed file is decompressed (Beam's FileSystems, by extension) and carried inline
    import gzip

    gz = _file(tmp_path, gzip.compress(b"some image bytes"), "b.jpg.gz")
    data, err = _read_bytes(gz, None, 1 << 20, by_reference=True)
    assert err is None and data == b"some image bytes" and type(data) is bytes


def test_sparse_tar_members_carry_their_bytes(tmp_path):
    """A sparse member is stored packed: its region on disk is not its bytes, so no reference."""
    jpg = imagegen.encode(imagegen.photo("coffee"), "JPEG")
    tar_path = tmp_path / "00000.tar"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, data in (("000000000.jpg", jpg), ("000000000.txt", b"a cup")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    raw = bytearray(buf.getvalue())
    raw[156:157] = tarfile.GNUTYPE_SPARSE  # the first member's type flag: sparse, no holes
    # a GNU sparse header with one map entry (offset 0, the whole size) and the checksum redone
    hdr = bytearray(raw[:512])
    hdr[386:398] = b"%011o\0" % 0
    hdr[398:410] = b"%011o\0" % len(jpg)
    hdr[483:495] = b"%011o\0" % len(jpg)  # realsize
    hdr[148:156] = b" " * 8
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    raw[:512] = hdr
    tar_path.write_bytes(bytes(raw))
    with tarfile.open(tar_path) as t:
        assert t.getmembers()[0].issparse()
    meta = beam.io.filesystem.FileMetadata(str(tar_path), tar_path.stat().st_size)
    recs = [r for r in _TarFn(IngestConfig()).process(meta) if r.image]
    assert len(recs) == 1 and recs[0].image == jpg and type(recs[0].image) is bytes


def test_tar_members_are_referenced_at_their_offset_in_an_uncompressed_tar(tmp_path):
    jpg = imagegen.encode(imagegen.photo("coffee"), "JPEG")
    tar_path = tmp_path / "00000.tar"
    imagegen.img2dataset_tar(tar_path, [("000000000", jpg, "a cup"), ("000000001", jpg, "again")])
    meta = beam.io.filesystem.FileMetadata(str(tar_path), tar_path.stat().st_size)
    recs = list(_TarFn(IngestConfig()).process(meta))
    images = [r.image for r in recs]
    assert len(images) == 2 and all(isinstance(i, SourceBytes) and i == jpg for i in images)
    raw = tar_path.read_bytes()
    assert all(raw[i.offset : i.offset + len(i)] == jpg for i in images)
    # a gzipped tar has no byte offsets into the file: its bytes travel inline
    gz = tmp_path / "00001.tar"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        ti = tarfile.TarInfo("000000002.jpg")
        ti.size = len(jpg)
        t.addfile(ti, io.BytesIO(jpg))
        ti = tarfile.TarInfo("000000002.txt")
        ti.size = 3
        t.addfile(ti, io.BytesIO(b"cap"))
    gz.write_bytes(buf.getvalue())
    meta = beam.io.filesystem.FileMetadata(str(gz), gz.stat().st_size)
    (rec,) = list(_TarFn(IngestConfig()).process(meta))
    assert rec.image == jpg and type(rec.image) is bytes


def test_ingest_gives_the_same_shards_by_reference_or_inline_and_with_either_jpeg_check(tmp_path):
    src = tmp_path / "src"
    imagegen.good_folder(src, n_shapes=3)
    for i, name in enumerate(imagegen.PHOTOS):  # JPEGs too, one of them cut short
        data = imagegen.encode(imagegen.photo(name, 80 + i), "JPEG")
        (src / f"j{i}.jpg").write_bytes(data[: len(data) // 2] if i == 0 else data)
        (src / f"j{i}.txt").write_text(f"a jpeg photo of {name}")
    outs = {}
    for by_ref, full in ((True, False), (False, False), (True, True)):
        out = tmp_path / f"out_{by_ref}_{full}"
        cfg = IngestJobConfig(input=str(src), output=str(out))
        cfg.ingest.bytes_by_reference = by_ref
        cfg.ingest.full_jpeg_decode = full
        ingest.run(cfg)
        rejects = pq.read_table(out / "rejects.parquet").to_pylist()
        tars = {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}
        outs[by_ref, full] = (tars, [(r["key"], r["reason"]) for r in rejects])
    first = outs[True, False]
    assert first[0] and first[1] == [("j0", "truncated_image")]
    assert all(o == first for o in outs.values())
