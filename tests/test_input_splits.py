"""Large inputs split into several tasks: Parquet by row groups, plain JSONL by byte ranges at line starts.

Pieces give the same documents, ids and ledger as the whole file, the same bytes on every executor, and a run
killed halfway through one large file redoes at most the pieces that were in flight.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydoc_data.topics import topics
from rich.console import Console

from gristmill.pipeline.engine import input_splits
from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.executors import InProcessExecutor, make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.input_splits import (
    LineCheckpoints,
    LineRange,
    Piece,
    byte_ranges,
    parse_source,
    piece_source,
    row_group_ranges,
    source_file,
)
from gristmill.pipeline.engine.runner import run_graph
from gristmill.pipeline.engine.stage import INPUT_DOCUMENTS_STAT, BatchResult, register
from gristmill.stages.ingest.read_text import DEFAULT_SPLIT_BYTES, ReadText, ReadTextConfig
from tests.conftest import REPO, data_files, gristmill_env

QUIET = Console(quiet=True)
# Real English prose: the paragraphs of Python's own help topics.
PARAGRAPHS = [text.strip() for topic in sorted(topics) for text in topics[topic].split("\n\n") if len(text.strip()) > 40]
MARKERS_VARIABLE = "GRISTMILL_TEST_SPLIT_MARKERS"


class SlowReadTextConfig(ReadTextConfig):
    seconds_per_batch: float = 0.0


@register
class SlowReadText(ReadText):
    """read_text that marks each piece it starts (in $GRISTMILL_TEST_SPLIT_MARKERS) and reads slowly, so a test
    can kill a run while pieces are in flight and see which were started."""

    name = "test_slow_read_text"
    Config = SlowReadTextConfig

    def read(self, source: str) -> Iterator[BatchResult]:
        if markers := os.environ.get(MARKERS_VARIABLE):
            Path(markers, source.rsplit("#", 1)[-1]).touch()
        for result in super().read(source):
            time.sleep(self.config.seconds_per_batch)
            yield result


def write_jsonl_corpus(path: Path, documents: int, seed: int = 0) -> Path:
    """Realistic documents, some without an id (named FILE/LINE), with blank and malformed lines among them."""
    rng = random.Random(seed)
    lines = []
    for index in range(documents):
        text = " ".join(rng.sample(PARAGRAPHS, rng.randint(1, 4)))
        document = {"text": text, "url": f"https://docs.example/{rng.choice(sorted(topics))}/{index}"}
        if index % 3:
            document["id"] = f"doc-{index}"
        lines.append(json.dumps(document, ensure_ascii=False))
        if index % 37 == 5:
            lines.append('{"text": "cut off')
        if index % 53 == 11:
            lines.append("")
        if index % 71 == 13:
            lines.append('["not", "an object"]')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_parquet_corpus(path: Path, rows: int, rows_per_group: int, seed: int = 0) -> Path:
    """Realistic documents in many row groups; some have no id (named FILE/ROW) and some no text (rejected)."""
    rng = random.Random(seed)
    texts = [None if index % 29 == 3 else " ".join(rng.sample(PARAGRAPHS, rng.randint(1, 3))) for index in range(rows)]
    ids = [None if index % 4 == 0 else f"row-{index}" for index in range(rows)]
    table = pa.table({"id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string())})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=rows_per_group)
    return path


def read_pieces(stage: ReadText, sources: list[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]], int]:
    """Documents (id, text) in order, ledger rows (id, reason, detail) sorted, and the input count of some sources."""
    kept, rejected, inputs = [], [], 0
    for source in sources:
        for result in stage.read(source):
            kept.extend(zip(result.kept.column("id").to_pylist(), result.kept.column("text").to_pylist()))
            rejected.extend(zip(*(result.rejected.column(name).to_pylist() for name in ("id", "reason", "detail"))))
            inputs += result.stats.get(INPUT_DOCUMENTS_STAT, 0)
    return kept, sorted(rejected), inputs


def read_whole(path: Path | str) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]], int]:
    return read_pieces(ReadText(ReadTextConfig(paths=[str(path)], split_bytes=0)), [str(path)])


def stage_for(path: Path | str, split_bytes: int | None) -> ReadText:
    return ReadText(ReadTextConfig(paths=[str(path)], split_bytes=split_bytes))


# The contract: piece syntax and the arithmetic of cutting.

def test_a_piece_names_its_file_and_a_half_open_range() -> None:
    source = piece_source("s3://bucket/a#b.jsonl", Piece("bytes", 100, 200))
    assert source == "s3://bucket/a#b.jsonl#bytes=100-200"
    assert parse_source(source) == ("s3://bucket/a#b.jsonl", Piece("bytes", 100, 200))
    assert source_file(source) == "s3://bucket/a#b.jsonl"
    assert parse_source("data/part.parquet") == ("data/part.parquet", None)
    with pytest.raises(ValueError, match="start before it ends"):
        parse_source("x.parquet#row_groups=3-3")


@given(size=st.integers(1, 10**12), pieces=st.integers(1, 500), slack=st.floats(0, 1))
def test_byte_ranges_cover_the_file_in_the_fewest_ranges_no_larger_than_the_target(
    size: int, pieces: int, slack: float
) -> None:
    target = max(1, int(-(-size // pieces) * (1 + slack)))
    ranges = byte_ranges(size, target)
    assert [start for start, _ in ranges] == [0, *(end for _, end in ranges[:-1])]
    assert ranges[-1][1] == size and byte_ranges(0, target) == []
    assert all(0 < end - start <= target for start, end in ranges)
    assert len(ranges) == -(-size // target)


@given(sizes=st.lists(st.integers(1, 1000), max_size=60), target=st.integers(1, 3000))
def test_row_group_ranges_are_consecutive_and_within_the_target_unless_one_group_passes_it(
    sizes: list[int], target: int
) -> None:
    ranges = row_group_ranges(sizes, target)
    assert [index for start, end in ranges for index in range(start, end)] == list(range(len(sizes)))
    for start, end in ranges:
        assert end - start == 1 or sum(sizes[start:end]) <= target
    for (start, end), (next_start, _) in itertools.pairwise(ranges):
        assert sum(sizes[start:end]) + sizes[next_start] > target  # greedy: the next group did not fit


# Splitting decisions: what is split, and what keeps today's single task.

def test_a_file_no_larger_than_split_bytes_keeps_its_single_task(tmp_path: Path) -> None:
    corpus = write_jsonl_corpus(tmp_path / "small.jsonl", 50)
    parquet = write_parquet_corpus(tmp_path / "small.parquet", 100, 10)
    assert ReadTextConfig(paths=["x"]).split_bytes == DEFAULT_SPLIT_BYTES == 1 << 30
    for split_bytes in (None, 0, DEFAULT_SPLIT_BYTES, corpus.stat().st_size):
        assert stage_for(corpus, split_bytes).list_inputs() == [str(corpus)]
    assert stage_for(parquet, parquet.stat().st_size).list_inputs() == [str(parquet)]
    assert stage_for(corpus, corpus.stat().st_size - 1).list_inputs() == [
        f"{corpus}#bytes=0-{corpus.stat().st_size // 2}", f"{corpus}#bytes={corpus.stat().st_size // 2}-{corpus.stat().st_size}"]


def test_compressed_jsonl_one_row_group_and_unreadable_parquet_stay_whole(tmp_path: Path) -> None:
    """A decompressor must start at the beginning, a row group is the smallest Parquet piece, and a damaged
    footer is the reader's to report."""
    plain = write_jsonl_corpus(tmp_path / "c.jsonl", 200)
    compressed = tmp_path / "c.jsonl.gz"
    compressed.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=0))
    one_group = write_parquet_corpus(tmp_path / "one.parquet", 300, 1000)
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(one_group.read_bytes()[:-100])
    for path in (compressed, one_group, damaged):
        assert stage_for(path, 1000).list_inputs() == [str(path)]
    with pytest.raises(ValueError, match="cannot be read by bytes"):
        list(stage_for(compressed, 1000).read(f"{compressed}#bytes=0-1000"))


def test_a_split_source_is_validated_with_its_field_named() -> None:
    with pytest.raises(ValueError, match="split_bytes"):
        ReadTextConfig(paths=["x"], split_bytes=-1)


# Pieces read as the whole file does.

LINE_KINDS = st.sampled_from(["with_id", "without_id", "blank", "spaces", "malformed", "not_object", "crlf",
                              "invalid_utf8", "long", "no_text"])


def line_of(kind: str, index: int) -> bytes:
    text = PARAGRAPHS[index % len(PARAGRAPHS)]
    return {
        "with_id": json.dumps({"id": f"d{index}", "text": text}).encode(),
        "without_id": json.dumps({"text": text}).encode(),
        "blank": b"",
        "spaces": b"  \t",
        "malformed": b'{"text": "cut',
        "not_object": b"[1, 2]",
        "crlf": json.dumps({"text": text}).encode() + b"\r",
        "invalid_utf8": b'{"text": "caf\xe9"}',
        "long": json.dumps({"text": " ".join(PARAGRAPHS[:40])}).encode(),
        "no_text": b'{"id": "empty"}',
    }[kind]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(LINE_KINDS, min_size=1, max_size=40), final_newline=st.booleans(),
       fraction=st.floats(0.001, 1.0), order_seed=st.integers(0, 1000))
def test_any_split_reads_the_same_documents_ids_and_ledger_as_the_whole_file(
    tmp_path_factory, kinds: list[str], final_newline: bool, fraction: float, order_seed: int
) -> None:
    """Whatever the split size, and in whatever order one process reads the pieces (line-number checkpoints
    from earlier pieces are reused), the union is the whole file's, ids and line numbers included."""
    path = tmp_path_factory.mktemp("split") / "corpus.jsonl"
    path.write_bytes(b"\n".join(line_of(kind, index) for index, kind in enumerate(kinds)) + (b"\n" if final_newline else b""))
    size = path.stat().st_size
    stage = stage_for(path, max(1, int(size * fraction)))
    sources = stage.list_inputs()
    assert all(source_file(source) == str(path) for source in sources)
    shuffled = sorted(sources, key=lambda source: random.Random(order_seed + hash(source) % 1000).random())
    per_piece = {source: read_pieces(stage, [source]) for source in shuffled}
    kept = [row for source in sources for row in per_piece[source][0]]
    rejected = sorted(row for source in sources for row in per_piece[source][1])
    inputs = sum(per_piece[source][2] for source in sources)
    assert (kept, rejected, inputs) == read_whole(path)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 400), rows_per_group=st.integers(1, 120), fraction=st.floats(0.01, 1.0))
def test_any_split_of_a_parquet_file_reads_the_same_rows_and_ledger(
    tmp_path_factory, rows: int, rows_per_group: int, fraction: float
) -> None:
    path = write_parquet_corpus(tmp_path_factory.mktemp("split") / "corpus.parquet", rows, rows_per_group)
    stage = stage_for(path, max(1, int(path.stat().st_size * fraction)))
    sources = stage.list_inputs()
    assert len(sources) <= pq.ParquetFile(path).num_row_groups
    assert read_pieces(stage, sources) == read_whole(path)


def test_a_line_longer_than_a_piece_belongs_to_the_piece_it_starts_in(tmp_path: Path) -> None:
    """The pieces it runs through own no line and read nothing; the line numbers after it are still right."""
    long_line = json.dumps({"text": "word " * 2000})
    path = tmp_path / "long.jsonl"
    path.write_text(f'{{"text": "first"}}\n{long_line}\n{{"text": "last"}}\n')
    stage = stage_for(path, 1000)
    sources = stage.list_inputs()
    pieces = [read_pieces(stage, [source])[0] for source in sources]
    assert [len(rows) for rows in pieces].count(0) >= 5
    assert [row for rows in pieces for row in rows] == read_whole(path)[0]
    assert pieces[-1] == [("long/3", "last")]


@pytest.mark.parametrize("order", ["forwards", "backwards"])
def test_line_numbers_are_counted_at_most_once_per_file_whatever_order_a_process_reads_its_pieces(
    tmp_path: Path, monkeypatch, order: str
) -> None:
    """Each piece read leaves checkpoints at its ends, so the next counts from the closest one, forwards or
    backwards: never a prefix of the file per piece."""
    path = write_jsonl_corpus(tmp_path / "c.jsonl", 400)
    size, checkpoints, counted, chunk = path.stat().st_size, LineCheckpoints(), [], 4096
    count = input_splits.count_newlines
    monkeypatch.setattr(input_splits, "COUNT_CHUNK_BYTES", chunk)
    monkeypatch.setattr(input_splits, "count_newlines", lambda stream, start, end: counted.append(end - start)
                        or count(stream, start, end))
    ranges = byte_ranges(size, size // 8)
    first_lines = {}
    for start, end in ranges if order == "forwards" else reversed(ranges):
        lines = LineRange(str(path), start, end, checkpoints)
        first_lines[start] = lines.first_line
        while lines.read(1 << 16):
            pass
        lines.close()
    content = path.read_bytes()
    starts = {start: start if start == 0 else content.index(b"\n", start - 1) + 1 for start, _ in ranges}
    assert first_lines == {start: content[:line_start].count(b"\n") for start, line_start in starts.items()}
    if order == "forwards":
        assert sum(counted) == 0
    else:  # the last piece counts the file up to it; every other piece at most one chunk from a checkpoint
        assert starts[ranges[-1][0]] <= sum(counted) <= starts[ranges[-1][0]] + len(ranges) * chunk


def test_a_remote_file_is_split_and_read_through_fsspec(tmp_path: Path) -> None:
    local_jsonl = write_jsonl_corpus(tmp_path / "remote.jsonl", 120)
    local_parquet = write_parquet_corpus(tmp_path / "remote.parquet", 300, 20)
    memory = fsspec.filesystem("memory")
    for local in (local_jsonl, local_parquet):
        url = f"memory://split-test/{local.name}"
        memory.pipe(url, local.read_bytes())
        try:
            stage = stage_for(url, local.stat().st_size // 4)
            sources = stage.list_inputs()
            assert len(sources) >= 3 and all(source.startswith(url + "#") for source in sources)
            assert read_pieces(stage, sources) == read_whole(local) == read_whole(url)
        finally:
            memory.rm(url)
    for extension, compress in ((".gz", gzip.compress), (".zst", zstandard.compress)):
        url = f"memory://split-test/remote.jsonl{extension}"  # compressed: read whole, decompressed on the way
        memory.pipe(url, compress(local_jsonl.read_bytes()))
        try:
            assert stage_for(url, 1000).list_inputs() == [url]
            assert read_whole(url) == read_whole(local_jsonl)
        finally:
            memory.rm(url)


# Through the runner: shard names, byte identity, and bounded loss of work.

def write_graph(root: Path, paths: list[Path], split_bytes: int, stage: str = "read_text", extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    graph = root / f"graph-{split_bytes}.yaml"
    listed = ", ".join(f"'{path}'" for path in paths)
    graph.write_text(("plugins: [tests.test_input_splits]\n" if stage != "read_text" else "")
                     + f"name: t\nstages:\n  read:\n    stage: {stage}\n"
                     f"    params: {{paths: [{listed}], split_bytes: {split_bytes}{extra}}}\n")
    return graph


def shard_records(dataset: Path) -> dict[str, dict]:
    records = {}
    for path in sorted((dataset / "_shards").glob("*.json")):
        record = json.loads(path.read_text())
        record.pop("seconds")
        records[path.stem] = record
    return records


@pytest.fixture(scope="module")
def large_inputs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("inputs")
    return [write_jsonl_corpus(root / "web.jsonl", 1500), write_parquet_corpus(root / "books.parquet", 2000, 100)]


def test_a_split_run_writes_the_whole_files_documents_in_deterministic_shards(tmp_path: Path, large_inputs) -> None:
    split_bytes = large_inputs[0].stat().st_size // 5 + 1
    run_graph(load_graph(write_graph(tmp_path, large_inputs, 0), tmp_path / "whole"), InProcessExecutor(), console=QUIET)
    split_graph = write_graph(tmp_path, large_inputs, split_bytes)
    run_graph(load_graph(split_graph, tmp_path / "split"), InProcessExecutor(), console=QUIET)

    whole, split = Dataset(tmp_path / "whole" / "read"), Dataset(tmp_path / "split" / "read")
    sources = [record.source for record in split.manifest().shards]
    assert sources == stage_for(large_inputs[0], split_bytes).list_inputs() + stage_for(large_inputs[1], split_bytes).list_inputs()
    assert [record.name for record in split.manifest().shards] == [f"part-{index:05d}" for index in range(len(sources))]
    assert sum("#bytes=" in source for source in sources) == 5 and sum("#row_groups=" in source for source in sources) >= 3
    for record in split.manifest().shards:  # the ledger holds per piece
        assert record.rows_in == record.documents_out + sum(record.rejected.values())

    def rows(dataset: Dataset, directory: str = "") -> pa.Table:
        return pa.concat_tables(pq.read_table(path) for path in sorted((dataset.path / directory).glob("part-*.parquet")))

    assert rows(split).equals(rows(whole))  # same documents, ids and text, in the same order
    assert rows(split).num_rows == whole.manifest().rows > 3000
    ledger = ["id", "reason", "detail"]
    assert sorted(rows(split, "_rejects").select(ledger).to_pylist(), key=str) == sorted(
        rows(whole, "_rejects").select(ledger).to_pylist(), key=str)
    assert {"missing_text", "malformed_json", "malformed_record"} <= set(whole.manifest().rejected)
    assert any(row.startswith("web/") for row in rows(whole).column("id").to_pylist())  # FILE/LINE ids were compared


def test_a_split_run_writes_the_same_bytes_in_process_and_on_a_two_worker_pool(tmp_path: Path, large_inputs) -> None:
    graph = write_graph(tmp_path, large_inputs, min(path.stat().st_size for path in large_inputs) // 4 + 1)
    run_graph(load_graph(graph, tmp_path / "inprocess"), InProcessExecutor(), console=QUIET)
    with make_executor("local", workers=2) as pool:
        run_graph(load_graph(graph, tmp_path / "local"), pool, console=QUIET)
    assert len(shard_records(tmp_path / "local" / "read")) >= 8
    assert data_files(tmp_path / "local") == data_files(tmp_path / "inprocess")
    assert shard_records(tmp_path / "local" / "read") == shard_records(tmp_path / "inprocess" / "read")


def start_run(graph: Path, output: Path, markers: Path) -> subprocess.Popen:
    markers.mkdir()
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(graph), "--output", str(output), "--executor", "local",
         "--workers", "2"],
        cwd=REPO, env={**gristmill_env(), MARKERS_VARIABLE: str(markers)}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.slow
def test_a_run_killed_halfway_through_one_large_file_redoes_at_most_the_pieces_in_flight(tmp_path: Path) -> None:
    corpus = write_jsonl_corpus(tmp_path / "large.jsonl", 2000, seed=1)
    pieces = 10
    graph = write_graph(tmp_path, [corpus], corpus.stat().st_size // pieces + 1, stage="test_slow_read_text",
                        extra=", seconds_per_batch: 0.4")
    plain = write_graph(tmp_path / "plain", [corpus], corpus.stat().st_size // pieces + 1)  # read_text itself
    run_graph(load_graph(plain, tmp_path / "uninterrupted"), InProcessExecutor(), console=QUIET)

    killed, workers = tmp_path / "killed", 2
    process = start_run(graph, killed, tmp_path / "first")
    shards = killed / "read" / "_shards"
    deadline = time.monotonic() + 120
    while len(list(shards.glob("*.json"))) < pieces // 2:
        assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    committed = {path.name: path.read_bytes() for path in shards.glob("*.json")}
    committed_data = {name: (killed / "read" / f"{Path(name).stem}.parquet").read_bytes() for name in committed}
    started_first = {path.name for path in (tmp_path / "first").iterdir()}
    assert pieces // 2 <= len(committed) < pieces
    assert not Dataset(killed / "read").is_complete
    events_before = len((killed / "_events.jsonl").read_text().splitlines())

    process = start_run(graph, killed, tmp_path / "second")
    assert process.wait(timeout=120) == 0, process.stderr.read()
    started_second = {path.name for path in (tmp_path / "second").iterdir()}
    assert len(started_second) == pieces - len(committed)  # every committed piece was skipped, none re-read
    lost = started_first & started_second  # begun before the kill and begun again
    assert len(lost) <= workers
    events = [json.loads(line) for line in (killed / "_events.jsonl").read_text().splitlines()[events_before:]]
    skipped = {event["shard"] for event in events if event["event"] == "shard_skipped"}
    done = {event["shard"] for event in events if event["event"] == "shard_done"}
    assert skipped == {Path(name).stem for name in committed} and len(done) == pieces - len(committed)
    assert {name: (shards / name).read_bytes() for name in committed} == committed
    assert {name: (killed / "read" / f"{Path(name).stem}.parquet").read_bytes() for name in committed} == committed_data
    assert data_files(killed) == data_files(tmp_path / "uninterrupted")
