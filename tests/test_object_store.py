"""Datasets on an object store: a real S3-protocol server on loopback holds the inputs and every dataset.

Object stores have no rename, so a shard commits by uploading its data and ledger under their final names and
then its shard record. These tests check what that protocol promises: the same bytes as on local disk, a killed
run that resumes (overwriting what a killed task left), and the read-side commands working on s3:// URLs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from gristmill.pipeline.engine.dataset import Dataset, DatasetError
from tests.conftest import REPO, data_files, gristmill_env, run_cli, write_corpus, write_graph
from tests.object_store import S3Server, s3_server  # noqa: F401 - the fixture

SHARDS = 6


def new_bucket(server: S3Server) -> str:
    bucket = f"gristmill-{uuid.uuid4().hex[:12]}"
    server.filesystem().mkdir(bucket)
    return bucket


def store_files(server: S3Server, root: str) -> dict[str, bytes]:
    """Every object under s3://root, by path relative to it."""
    filesystem = server.filesystem()
    filesystem.invalidate_cache()
    return {key.removeprefix(root + "/"): filesystem.cat_file(key) for key in sorted(filesystem.find(root))}


def parquet_of(files: dict[str, bytes]) -> dict[str, bytes]:
    return {name: content for name, content in files.items() if name.endswith(".parquet")}


def graph_with(tmp_path: Path, corpus: str, extra: str = "", plugins: bool = False) -> Path:
    return write_graph(tmp_path / "g.yaml", corpus, extra, plugins=plugins)


def test_a_graph_on_s3_writes_the_bytes_it_writes_on_local_disk(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = new_bucket(s3_server)
    write_corpus(tmp_path / "corpus", files=SHARDS, docs_per_file=80)
    s3_server.filesystem().put(str(tmp_path / "corpus") + "/", f"{bucket}/corpus/", recursive=True)
    dedup = "  dedup:\n    stage: near_dedup\n    input: long\n    params: {threshold: 0.7}\n"
    run_cli("run", str(graph_with(tmp_path, str(tmp_path / "corpus"), dedup)), "--output", str(tmp_path / "local"),
            "--executor", "inprocess")

    remote_graph = write_graph(tmp_path / "remote.yaml", f"s3://{bucket}/corpus", dedup)
    run_cli("run", str(remote_graph), "--output", f"s3://{bucket}/run", "--executor", "local", "--workers", "2")

    on_store = store_files(s3_server, f"{bucket}/run")
    assert parquet_of(on_store) == data_files(tmp_path / "local")
    assert len([name for name in on_store if name.startswith("dedup/part-")]) == SHARDS
    assert not [name for name in on_store if ".tmp-" in name]  # nothing renamed, nothing left behind
    for node in ("read", "long", "dedup"):
        local, remote = Dataset(tmp_path / "local" / node).manifest(), Dataset(f"s3://{bucket}/run/{node}").manifest()
        assert [(r.name, r.rows, r.bytes, r.checksum, r.ledger_checksum) for r in remote.shards] == \
               [(r.name, r.rows, r.bytes, r.checksum, r.ledger_checksum) for r in local.shards]
        assert remote.rows_in == remote.rows + sum(remote.rejected.values())
    assert (json.loads(on_store["_summary.json"])["stages"][-1]["rows_out"]
            == Dataset(tmp_path / "local" / "dedup").manifest().rows)
    assert b'"event": "node_done"' in on_store["_events.jsonl"]


def test_a_killed_run_on_s3_resumes_overwriting_what_its_killed_tasks_left(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = new_bucket(s3_server)
    write_corpus(tmp_path / "corpus", files=10, docs_per_file=50)
    slow = "  slow:\n    stage: test_slow_copy\n    input: long\n    params: {seconds_per_batch: 0.5}\n"
    graph = graph_with(tmp_path, str(tmp_path / "corpus"), slow, plugins=True)
    run_cli("run", str(graph), "--output", str(tmp_path / "local"), "--executor", "inprocess")

    output = f"s3://{bucket}/run"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(graph), "--output", output, "--executor", "local",
         "--workers", "2"],
        cwd=REPO, env=gristmill_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    filesystem = s3_server.filesystem()
    records = f"{bucket}/run/slow/_shards"
    deadline = time.monotonic() + 120
    while len(filesystem.glob(records + "/*.json")) < 3:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no shard of the slow node committed within 120 s"
        time.sleep(0.1)
        filesystem.invalidate_cache()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    filesystem.invalidate_cache()
    committed = sorted(path.rsplit("/", 1)[-1] for path in filesystem.glob(records + "/*.json"))
    assert 3 <= len(committed) < 10 and not filesystem.exists(f"{bucket}/run/slow/_manifest.json")
    killed = Dataset(f"{output}/slow")
    with pytest.raises(DatasetError, match="no _manifest.json"):
        killed.manifest()
    before = {name: filesystem.cat_file(f"{bucket}/run/slow/{name.replace('.json', '.parquet')}") for name in committed}

    # What a task killed between its uploads leaves: data under its final name, no shard record. Readers ignore it.
    orphan = next(f"part-{index:05d}" for index in range(10) if f"part-{index:05d}.json" not in committed)
    filesystem.pipe_file(f"{bucket}/run/slow/{orphan}.parquet", b"half an upload")
    assert orphan not in {record.name for record in killed.shard_records()}

    run_cli("run", str(graph), "--output", output, "--executor", "local", "--workers", "2")
    on_store = store_files(s3_server, f"{bucket}/run")
    assert parquet_of(on_store) == data_files(tmp_path / "local")
    assert all(on_store[f"slow/{name.replace('.json', '.parquet')}"] == content for name, content in before.items())
    events = [json.loads(line) for line in on_store["_events.jsonl"].decode().splitlines()]
    resumed = [event["shard"] for event in events if event["event"] == "shard_skipped" and event["node"] == "slow"]
    assert sorted(f"{name}.json" for name in resumed) == committed  # committed shards were not redone


def test_inspect_verify_and_report_read_a_dataset_on_s3(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = new_bucket(s3_server)
    write_corpus(tmp_path / "corpus", files=2, docs_per_file=40)
    output = f"s3://{bucket}/run"
    run_cli("run", str(graph_with(tmp_path, str(tmp_path / "corpus"))), "--output", output, "--executor", "inprocess")

    described = json.loads(run_cli("inspect", "--input", f"{output}/long", "--json", "--sample", "2").stdout)
    assert described["stage"] == "length_filter" and len(described["sample"]) == 2
    assert described["rows"] == Dataset(f"{output}/long").manifest().rows
    assert "ok" in run_cli("verify", "--input", f"{output}/long").stdout
    run_cli("report", "--input", output, "--output", str(tmp_path / "report"))
    assert "length_filter" in (tmp_path / "report" / "report.md").read_text()

    # A flipped byte in a shard on the store is caught before anything reads it.
    filesystem = s3_server.filesystem()
    shard = f"{bucket}/run/long/part-00000.parquet"
    damaged = bytearray(filesystem.cat_file(shard))
    damaged[len(damaged) // 2] ^= 0xFF
    filesystem.pipe_file(shard, bytes(damaged))
    result = run_cli("verify", "--input", f"{output}/long", check=False)
    assert result.returncode != 0 and "part-00000.parquet" in result.stdout + result.stderr


def test_exact_dedup_and_decontamination_keep_their_work_on_s3(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = new_bucket(s3_server)
    write_corpus(tmp_path / "corpus", files=3, docs_per_file=60)
    quoted = next(record["text"] for record in map(json.loads, (tmp_path / "corpus" / "part1.jsonl").open())
                  if len(record["text"].split()) > 100)
    (tmp_path / "items.jsonl").write_text(json.dumps({"question": quoted}) + "\n")
    s3_server.filesystem().put_file(str(tmp_path / "items.jsonl"), f"{bucket}/benchmarks/items.jsonl")
    stages = ("  exact:\n    stage: exact_dedup\n    input: long\n"
              "  clean:\n    stage: decontaminate\n    input: exact\n"
              "    params: {benchmarks: [{name: quiz, paths: ['%s'], fields: [question]}]}\n")
    local = write_graph(tmp_path / "local.yaml", str(tmp_path / "corpus"), stages % (tmp_path / "items.jsonl"))
    remote = write_graph(tmp_path / "remote.yaml", str(tmp_path / "corpus"), stages % f"s3://{bucket}/benchmarks/items.jsonl")
    run_cli("run", str(local), "--output", str(tmp_path / "local"), "--executor", "inprocess")
    run_cli("run", str(remote), "--output", f"s3://{bucket}/run", "--executor", "local", "--workers", "2")

    on_store = store_files(s3_server, f"{bucket}/run")
    assert parquet_of(on_store) == data_files(tmp_path / "local")
    assert Dataset(f"s3://{bucket}/run/clean").manifest().rejected == {"contaminated": 1}
    assert any(name.startswith("exact/_work/") for name in on_store)
    assert any(name.startswith("clean/_work/") and name.endswith(".npy") for name in on_store)


def test_tokens_and_their_export_on_s3_match_local_disk(tmp_path: Path, s3_server: S3Server) -> None:
    from tests.test_tokenize_decompose import PARAGRAPHS, documents_of_varied_length, write_tokens_graph
    from gristmill.stages.tokens.tokenization import DEFAULT_EOS, save_tokenizer, train_byte_level_bpe

    bucket = new_bucket(s3_server)
    save_tokenizer(train_byte_level_bpe(PARAGRAPHS, vocab_size=600), tmp_path / "tokenizer", DEFAULT_EOS, {})
    (tmp_path / "corpus").mkdir()
    with open(tmp_path / "corpus" / "part0.jsonl", "w") as handle:
        for index, text in enumerate(documents_of_varied_length(60, seed=3)):
            handle.write(json.dumps({"id": f"d{index}", "text": text}) + "\n")
    graph = write_tokens_graph(tmp_path / "g.yaml", tmp_path / "corpus", tmp_path / "tokenizer",
                               "{min_bucket: 5, max_bucket: 9}")
    run_cli("run", str(graph), "--output", str(tmp_path / "local"), "--executor", "inprocess")
    run_cli("export", "--input", str(tmp_path / "local" / "pieces"), "--output", str(tmp_path / "local-export"))
    run_cli("run", str(graph), "--output", f"s3://{bucket}/run", "--executor", "inprocess")
    run_cli("export", "--input", f"s3://{bucket}/run/pieces", "--output", f"s3://{bucket}/export")

    assert parquet_of(store_files(s3_server, f"{bucket}/run")) == data_files(tmp_path / "local")
    exported = store_files(s3_server, f"{bucket}/export")
    local = {str(path.relative_to(tmp_path / "local-export")): path.read_bytes()
             for path in sorted((tmp_path / "local-export").rglob("*")) if path.is_file()}
    binaries = [name for name in local if name.endswith((".bin", ".idx"))]
    assert binaries and {name: exported[name] for name in binaries} == {name: local[name] for name in binaries}
    assert json.loads(exported["stats.json"])["tokens"] == json.loads(local["stats.json"])["tokens"]


def test_the_generation_cache_appends_on_s3_by_adding_objects(s3_server: S3Server) -> None:
    from gristmill.pipeline.engine.files import as_location
    from gristmill.stages.rewrite.generation import GenerationCache

    bucket = new_bucket(s3_server)
    path = as_location(f"s3://{bucket}/run/rewrite/_work/generations/part-00000.jsonl")
    cache = GenerationCache(path)
    cache.add([{"key": "a", "text": "first"}])
    cache.add([{"key": "b", "text": "second"}, {"key": "a", "text": "again"}])
    s3_server.filesystem().pipe_file(f"{bucket}/run/rewrite/_work/generations/part-00000-000003.jsonl",
                                     b'{"key": "c", "text": "cut sh')  # what a kill mid-line would leave on disk
    reloaded = GenerationCache(path)
    assert {key: entry["text"] for key, entry in reloaded.entries.items()} == {"a": "again", "b": "second"}
    assert sorted(store_files(s3_server, f"{bucket}/run/rewrite/_work/generations")) == [
        "part-00000-000001.jsonl", "part-00000-000002.jsonl", "part-00000-000003.jsonl"]


def test_a_damaged_input_shard_on_s3_is_refused_by_name_and_its_local_copy_removed(
        tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    bucket = new_bucket(s3_server)
    write_corpus(tmp_path / "corpus", files=2, docs_per_file=40)
    output = f"s3://{bucket}/run"
    run_cli("run", str(graph_with(tmp_path, str(tmp_path / "corpus"))), "--output", output, "--executor", "inprocess")
    filesystem = s3_server.filesystem()
    shard = f"{bucket}/run/read/part-00001.parquet"
    damaged = bytearray(filesystem.cat_file(shard))
    damaged[len(damaged) // 2] ^= 0xFF
    filesystem.pipe_file(shard, bytes(damaged))

    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setenv("TMPDIR", str(spool))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again in this process too
    result = run_cli("length-filter", "--input", f"{output}/read", "--output", f"{output}/again", "--min-words", "5",
                     "--executor", "inprocess", "--retries", "0", check=False)
    assert result.returncode == 1
    assert f"s3://{shard}: checksum differs from its shard record (damaged)" in result.stderr
    assert list(spool.iterdir()) == []  # the downloaded copies, good and damaged, are gone
