"""The jobs against an object store: Beam's real `s3://` filesystem (boto3) talking to a local
S3-compatible server (moto's), as a user's jobs talk to S3 or MinIO. Inputs, shards, manifest, rejects and
the inspect report all live in the bucket; nothing is written locally."""

from __future__ import annotations

import io
import json
import logging
import tarfile

import imagegen
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from mmdata.cli import main

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

pytestmark = pytest.mark.slow

SECRET = "s3cr3t-value-not-for-logs"
BUCKET = "mmdata-test"


@pytest.fixture(scope="module")
def s3():
    """(boto3 client, the Beam options that reach the server) for a bucket on a local server."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="test-key-id",
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    args = [
        f"--s3_endpoint_url={url}",
        "--s3_access_key_id=test-key-id",
        f"--s3_secret_access_key={SECRET}",
        "--s3_region_name=us-east-1",
    ]
    yield client, args
    server.stop()


def _get(client, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _keys(client, prefix: str) -> dict[str, object]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: o["ETag"] for p in pages for o in p.get("Contents", [])}


def _upload_manifest(client) -> int:
    """Four photos and a row whose object is missing; returns the number of rows."""
    rows = []
    for name in ("coffee", "rocket", "astronaut", "chelsea"):
        client.put_object(
            Bucket=BUCKET,
            Key=f"in/imgs/{name}.jpg",
            Body=imagegen.encode(imagegen.photo(name), "JPEG"),
        )
        rows.append({"path": f"imgs/{name}.jpg", "caption": f"a photo of {name}"})
    rows.append({"path": "imgs/gone.jpg", "caption": "not uploaded"})
    client.put_object(
        Bucket=BUCKET,
        Key="in/pairs.jsonl",
        Body="\n".join(json.dumps(r) for r in rows).encode(),
    )
    return len(rows)


def test_demo_reads_and_writes_an_object_store(s3, capsys, caplog, tmp_path):
    client, args = s3
    n_rows = _upload_manifest(client)
    out = f"s3://{BUCKET}/out/demo"
    caplog.set_level(logging.INFO)
    assert main(["demo", "--input", f"s3://{BUCKET}/in/pairs.jsonl", "--output", out, *args]) == 0
    printed = capsys.readouterr().out
    assert f"dataset: {out}" in printed and "samples: 4" in printed

    objects = _keys(client, "out/demo/")
    assert {
        "out/demo/manifest.json",
        "out/demo/rejects.parquet",
        "out/demo/.mmdata-dataset",
    } <= set(objects)
    assert not [k for k in objects if ".tmp-" in k]  # no temporary objects left behind
    m = json.loads(_get(client, "out/demo/manifest.json"))
    assert m["counts"]["ingest"] == {"input": n_rows, "kept": 4, "rejected": {"missing_file": 1}}
    assert m["totals"] == {"samples": 4, "rejects": 1}
    rejects = pq.read_table(io.BytesIO(_get(client, "out/demo/rejects.parquet"))).to_pylist()
    assert [r["reason"] for r in rejects] == ["missing_file"]
    assert rejects[0]["source"] == "pairs.jsonl#4"  # the manifest row, relative to the input

    # the shards are WebDataset tars that the webdataset library reads
    samples = []
    for shard in m["shards"]:
        data = _get(client, f"out/demo/{shard['name']}")
        assert len(data) == shard["bytes"]
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = [ti.name for ti in tar]
        assert members == sorted(members)
        (tmp_path / shard["name"]).write_bytes(data)
        samples += list(wds.WebDataset(str(tmp_path / shard["name"]), shardshuffle=False))
    assert len(samples) == 4
    assert all({"target.jpg", "json"} <= set(s) for s in samples)

    # the secret key reaches Beam but neither the log nor the dataset
    assert SECRET not in caplog.text
    assert "--s3_secret_access_key=***" in caplog.text
    assert SECRET not in json.dumps(m)

    # a rerun skips the complete shard and leaves its object as it was
    caplog.clear()
    assert main(["demo", "--input", f"s3://{BUCKET}/in/pairs.jsonl", "--output", out, *args]) == 0
    assert "0 shards written, 1 already complete" in caplog.text
    again = _keys(client, "out/demo/")
    shard_keys = [f"out/demo/{s['name']}" for s in m["shards"]]
    assert [again[k] for k in shard_keys] == [objects[k] for k in shard_keys]

    # the report is written into the bucket too
    assert main(["inspect", out, *args]) == 0
    page = _get(client, "out/demo/inspect.html").decode()
    assert "missing_file" in page and page.count("data:image/png;base64,") >= 4


def test_ingest_refuses_a_prefix_holding_other_files(s3, capsys):
    client, args = s3
    _upload_manifest(client)
    client.put_object(Bucket=BUCKET, Key="theirs/notes.txt", Body=b"someone else's")
    code = main(
        [
            "ingest",
            "--input",
            f"s3://{BUCKET}/in/pairs.jsonl",
            "--output",
            f"s3://{BUCKET}/theirs",
            *args,
        ]
    )
    assert code == 2
    assert "not an mmdata dataset" in capsys.readouterr().err
    assert set(_keys(client, "theirs/")) == {"theirs/notes.txt"}


def test_a_failed_remote_run_leaves_no_marker_in_the_store(s3, monkeypatch):
    """A job that fails on its (remote) runner before writing anything leaves no `.mmdata-dataset`
    marker claiming the prefix as a dataset."""
    import sys
    import types

    from apache_beam.runners.runner import PipelineRunner

    class FailingRunner(PipelineRunner):
        def run_pipeline(self, pipeline, options):
            raise RuntimeError("job failed on the cluster")

    module = types.ModuleType("mmdata_fake_remote_s3")
    module.FailingRunner = FailingRunner
    monkeypatch.setitem(sys.modules, "mmdata_fake_remote_s3", module)
    client, args = s3
    _upload_manifest(client)
    out = f"s3://{BUCKET}/out/failed"
    argv = ["ingest", "--input", f"s3://{BUCKET}/in/pairs.jsonl", "--output", out, *args]
    with pytest.raises(RuntimeError, match="job failed on the cluster"):
        main([*argv, "--runner=mmdata_fake_remote_s3.FailingRunner"])
    assert _keys(client, "out/failed/") == {}


def test_ingest_of_img2dataset_shards_in_the_store(s3, tmp_path, capsys):
    client, args = s3
    local = tmp_path / "00000.tar"
    imagegen.img2dataset_tar(
        local,
        [
            ("000000000", imagegen.encode(imagegen.photo("coffee"), "JPEG"), "a cup of coffee"),
            ("000000001", b"not an image", "broken"),
        ],
    )
    client.put_object(Bucket=BUCKET, Key="wds/00000.tar", Body=local.read_bytes())
    out = f"s3://{BUCKET}/out/pairs"
    assert main(["ingest", "--input", f"s3://{BUCKET}/wds/", "--output", out, *args]) == 0
    m = json.loads(_get(client, "out/pairs/manifest.json"))
    c = m["counts"]["ingest"]
    assert c["input"] == 2 and c["kept"] == 1 and sum(c["rejected"].values()) == 1
    # an output inside the input prefix is refused: the next run would read its own shards
    inside = f"s3://{BUCKET}/wds/out"
    assert main(["ingest", "--input", f"s3://{BUCKET}/wds/", "--output", inside, *args]) == 2
    assert "is inside the input folder" in capsys.readouterr().err
    assert set(_keys(client, "wds/")) == {"wds/00000.tar"}


def test_ingest_of_a_folder_prefix_with_sidecars(s3):
    client, args = s3
    for name in ("coffee", "rocket"):
        body = imagegen.encode(imagegen.photo(name), "PNG")
        client.put_object(Bucket=BUCKET, Key=f"folder/sub/{name}.png", Body=body)
        client.put_object(Bucket=BUCKET, Key=f"folder/sub/{name}.txt", Body=f"a {name}".encode())
    client.put_object(Bucket=BUCKET, Key="folder/orphan.txt", Body=b"no image")
    out = f"s3://{BUCKET}/out/folder"
    assert main(["ingest", "--input", f"s3://{BUCKET}/folder", "--output", out, *args]) == 0
    m = json.loads(_get(client, "out/folder/manifest.json"))
    assert m["counts"]["ingest"] == {"input": 3, "kept": 2, "rejected": {"orphan_sidecar": 1}}
    assert m["totals"]["samples"] == 2


def test_reads_share_one_client_per_thread(s3, monkeypatch):
    """Beam's S3 filesystem makes a boto3 client per call (50-170 ms of CPU); image reads reuse one."""
    from apache_beam.io.aws.clients.s3 import boto3_client

    from mmdata.io import paths

    client, args = s3
    for i in range(3):
        client.put_object(Bucket=BUCKET, Key=f"few/{i}.bin", Body=bytes([i]) * 10)
    paths.use_options(args)
    made = []
    real = boto3_client.Client.__init__

    def counting(self, *a, **kw):
        made.append(1)
        real(self, *a, **kw)

    monkeypatch.setattr(boto3_client.Client, "__init__", counting)
    got = [paths.read_bytes(f"s3://{BUCKET}/few/{i}.bin") for i in range(3)]
    assert got == [bytes([i]) * 10 for i in range(3)]
    assert not paths.exists(f"s3://{BUCKET}/few/missing.bin")
    assert len(made) <= 1
    paths.use_options(None)  # the next options object gets its own client


def test_trainer_streams_a_dataset_from_the_store(s3, monkeypatch, tmp_path, capsys):
    """`mmdata train --shards s3://...`: the manifest and shards are read through Beam's S3
    filesystem (webdataset has no s3 opener), with boto3's usual credentials and endpoint (the
    environment; the trainer takes no Beam options), in the loader's worker processes too."""
    from apache_beam.io.filesystems import FileSystems

    client, args = s3
    _upload_manifest(client)
    data = f"s3://{BUCKET}/train/demo"
    assert main(["demo", "--input", f"s3://{BUCKET}/in/pairs.jsonl", "--output", data, *args]) == 0
    endpoint = args[0].split("=", 1)[1]
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test-key-id",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(FileSystems, "_pipeline_options", None)  # none of the jobs' options left
    tiny = [
        "model.image_size=16",
        "model.base_channels=16",
        "model.channel_mults=[1,2]",
        "model.num_res_blocks=1",
        "model.attention_levels=[1]",
        "model.head_channels=16",
        "model.cond_dim=32",
        "data.num_workers=2",
        "data.shuffle_buffer=4",
        "progress=false",
    ]
    out = tmp_path / "run"
    sets = [a for t in tiny for a in ("--set", t)]
    argv = [
        "train",
        "--shards",
        data,
        "--output",
        str(out),
        "--max-steps",
        "3",
        "--batch-size",
        "2",
    ]
    assert main([*argv, *sets]) == 0, capsys.readouterr().err[-2000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log and log[-1]["step"] == 3
    assert (out / "checkpoints").is_dir()
    # a dataset root that is not there is a one-line error naming it
    assert (
        main(["train", "--shards", f"s3://{BUCKET}/nothing", "--output", str(tmp_path / "r2")]) == 2
    )
    assert "not an mmdata dataset" in capsys.readouterr().err
