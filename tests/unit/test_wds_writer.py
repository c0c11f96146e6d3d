"""The shard writer uses webdataset's own TarWriter, loaded without torch for fast Beam worker start-up."""

from __future__ import annotations

import io
import subprocess
import sys

import webdataset as wds

from mmdata.io.wds_writer import private_tarwriter


def _write(cls) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    with cls(buf, encoder=False, mtime=946684800, user="mmdata", group="mmdata") as tw:
        for i in range(3):
            tw.write({"__key__": f"{i:09d}", "jpg": bytes([i]) * 100, "json": b"{}"})
    return buf.getvalue()


def test_private_writer_is_webdatasets_own_and_writes_the_same_bytes() -> None:
    private = private_tarwriter()
    assert private is not wds.TarWriter
    assert private.__qualname__ == wds.TarWriter.__qualname__
    assert _write(private) == _write(wds.TarWriter)


def test_job_modules_and_shard_writing_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import pipelines.demo, pipelines.ingest\n"
        "from mmdata.io.shards import ShardItem, encode_tar\n"
        "encode_tar([('000000001', ShardItem('a', {'jpg': b'x'}))])\n"
        "print(sorted(m for m in ('torch', 'webdataset') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
