"""Large WARC/WET files split into several ingest tasks at record boundaries.

Every piece finds its own first record and stops where the next piece starts, so the pieces together give the
unsplit file's documents, ids, ledger and counts, on every executor; a file gzipped as one member stays whole.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import random
import re
import threading
import zlib
from pathlib import Path

import fsspec
from fsspec.implementations.memory import MemoryFileSystem
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from rich.console import Console

from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.executors import InProcessExecutor, make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.input_splits import Piece, byte_ranges, parse_source, piece_source, source_file
from gristmill.pipeline.engine.runner import run_graph
from gristmill.pipeline.engine.stage import INPUT_DOCUMENTS_STAT
from gristmill.stages.ingest import ingest
from gristmill.stages.ingest.ingest import DEFAULT_SPLIT_BYTES, SCHEMA, Ingest, IngestConfig
from gristmill.stages.ingest.warc_framing import is_record_start
from tests.conftest import data_files
from tests.warc_fixtures import (
    Capture,
    article,
    bad_captures,
    good_captures,
    raw_record,
    response_block,
    write_misframed_warc,
    write_warc,
    write_wet,
)

QUIET = Console(quiet=True)
GZIP_HEADER = b"\x1f\x8b\x08"


def trap_captures() -> list[Capture]:
    """Pages whose bytes look like record starts to a scan: a binary payload holding gzip headers (one a member
    that decompresses to a WARC header with a length no record follows), stored verbatim by deflate as random
    data is; and an HTML page quoting a WARC header at a line start."""
    rng = random.Random(11)

    def noise(size: int) -> bytes:
        return rng.randbytes(size)

    fake_header = b"WARC/1.0\r\nWARC-Type: response\r\nContent-Length: 999999\r\n\r\nthe rest is missing"
    binary = (noise(40_000) + gzip.compress(b"a gzip member inside a payload, not a record", mtime=0)
              + noise(40_000) + GZIP_HEADER + b"\x00" + noise(1_000) + gzip.compress(fake_header, mtime=0)
              + noise(3_000))
    quoted = article("How a WARC file looks", ["Each record opens with a version line and its headers:"])
    quoted = quoted.replace("</article>", "<pre>\nWARC/1.0\r\nWARC-Type: response\r\nContent-Length: 40\r\n\r\n"
                                          "and a block of that many bytes.\n</pre></article>")
    return [Capture("archive.bin", binary, content_type="application/octet-stream",
                    payload_type="application/octet-stream"), Capture("quoted-header", quoted.encode())]


def record_without_id(compress: bool) -> bytes:
    block = response_block(b"<html><body><p>A page whose record has no id, named by its place.</p></body></html>")
    return raw_record([("WARC-Type", "response"), ("WARC-Target-URI", "https://news.example.org/no-id"),
                       ("Content-Type", "application/http; msgtype=response"), ("Content-Length", str(len(block)))],
                      block, compress=compress)


def write_sample_files(root: Path) -> dict[str, Path]:
    """One file per way a WARC comes: per-record gzip and plain with traps and bad pages, misframed records,
    WET, and a file cut off inside its last record."""
    captures = good_captures(6) + trap_captures() + good_captures(6, seed=1) + list(bad_captures().values())
    files = {}
    for name, compress in (("mixed.warc.gz", True), ("mixed.warc", False)):
        path = write_warc(root / name, captures, compress=compress)
        path.write_bytes(path.read_bytes() + record_without_id(compress))
        files[name] = path
    files["misframed-long.warc.gz"] = write_misframed_warc(root / "misframed-long.warc.gz", good_captures(8), 3,
                                                           "long", "record")
    files["misframed-short.warc"] = write_misframed_warc(root / "misframed-short.warc", good_captures(8), 5,
                                                         "short", "none")
    texts = [(f"wet-{index}", f"Plain text of page {index}. " * (5 + index)) for index in range(30)]
    files["sample.warc.wet.gz"] = write_wet(root / "sample.warc.wet.gz", texts)
    whole = write_warc(root / "uncut.warc.gz", good_captures(12, seed=2)).read_bytes()
    files["cut.warc.gz"] = root / "cut.warc.gz"
    files["cut.warc.gz"].write_bytes(whole[: len(whole) - 700])
    return files


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, Path]:
    return write_sample_files(tmp_path_factory.mktemp("warcs"))


def stage_for(path: Path | str, split_bytes: int | None, **params) -> Ingest:
    stage = Ingest(IngestConfig(paths=[str(path)], split_bytes=split_bytes, **params))
    stage.setup()
    return stage


def read_sources(stage: Ingest, sources: list[str]) -> tuple[pa.Table, list[tuple], dict[str, int]]:
    """Kept documents in order, ledger rows (id, reason, detail) sorted, and stats summed over some sources."""
    kept, rejected, stats = [], [], {}
    for source in sources:
        for result in stage.read(source):
            kept.append(result.kept)
            rejected.extend(zip(*(result.rejected.column(name).to_pylist() for name in ("id", "reason", "detail"))))
            for key, value in result.stats.items():
                stats[key] = stats.get(key, 0) + value
    return pa.concat_tables(kept) if kept else SCHEMA.empty_table(), sorted(rejected), stats


UNSPLIT: dict[Path, tuple] = {}


def read_unsplit(path: Path) -> tuple[pa.Table, list[tuple], dict[str, int]]:
    if path not in UNSPLIT:
        UNSPLIT[path] = read_sources(stage_for(path, 0), [str(path)])
    return UNSPLIT[path]


def member_starts(data: bytes) -> list[int]:
    """Where each gzip member of a per-record WARC starts, found by decompressing it."""
    starts, offset = [], 0
    while offset < len(data):
        starts.append(offset)
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        decompressor.decompress(data[offset:])
        offset = len(data) - len(decompressor.unused_data)
    return starts


# The option and the planning.

def test_split_bytes_defaults_to_1_gib_and_is_validated_with_its_field_named(samples) -> None:
    assert IngestConfig(paths=["x"]).split_bytes == DEFAULT_SPLIT_BYTES == 1 << 30
    with pytest.raises(ValidationError, match="split_bytes"):
        IngestConfig(paths=["x"], split_bytes=-1)
    path = samples["mixed.warc.gz"]
    for split_bytes in (None, 0, DEFAULT_SPLIT_BYTES, path.stat().st_size):
        assert stage_for(path, split_bytes).list_inputs() == [str(path)]
    size = path.stat().st_size
    assert stage_for(path, size - 1).list_inputs() == [f"{path}#bytes=0-{size // 2}", f"{path}#bytes={size // 2}-{size}"]


def test_planning_reads_the_magic_and_for_gzip_only_a_probe_after_the_first_cut(samples, monkeypatch) -> None:
    reads: list[tuple[int, int]] = []
    open_input = ingest.open_input

    class Counting:
        def __init__(self, stream):
            self.stream = stream

        def read(self, size=-1):
            position = self.stream.tell()
            data = self.stream.read(size)
            reads.append((position, len(data)))
            return data

        def __getattr__(self, name):
            return getattr(self.stream, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.stream.close()

    monkeypatch.setattr(ingest, "open_input", lambda *args: Counting(open_input(*args)))
    plain = samples["mixed.warc"]
    assert len(stage_for(plain, -(-plain.stat().st_size // 4)).list_inputs()) == 4
    assert reads == [(0, 2)]
    reads.clear()
    compressed = samples["mixed.warc.gz"]
    assert len(stage_for(compressed, -(-compressed.stat().st_size // 4)).list_inputs()) == 4
    assert reads[0] == (0, 2) and all(position >= compressed.stat().st_size // 4 for position, _ in reads[1:])


def test_a_file_gzipped_as_one_member_stays_one_task_and_reads_whole_even_if_cut(samples, tmp_path) -> None:
    plain = samples["mixed.warc"].read_bytes()
    path = tmp_path / "one-member.warc.gz"
    path.write_bytes(gzip.compress(plain, mtime=0))
    size = path.stat().st_size
    assert stage_for(path, size // 5).list_inputs() == [str(path)]
    # Cut all the same (the file replaced after planning, say): the first piece's member is the whole file, so it
    # reads everything, and no other piece finds a record start in its range.
    stage = stage_for(path, size // 5)
    pieces = [piece_source(str(path), Piece("bytes", start, end)) for start, end in byte_ranges(size, size // 5)]
    assert read_sources(stage, pieces[:1]) == read_unsplit(path)
    assert all(read_sources(stage, [piece])[0].num_rows == 0 for piece in pieces[1:])
    assert read_sources(stage, pieces) == read_unsplit(path)


# The boundary rule.

def test_only_real_record_starts_pass_the_boundary_test(samples) -> None:
    """The fixture holds gzip headers inside a member's compressed bytes, and a quoted WARC header at a line start;
    the boundary test takes real record starts and none of these."""
    data = samples["mixed.warc.gz"].read_bytes()
    starts = member_starts(data)
    false_headers = [match.start() for match in re.finditer(re.escape(GZIP_HEADER), data) if match.start() not in starts]
    assert len(false_headers) >= 3
    with open(samples["mixed.warc.gz"], "rb") as stream:
        assert [offset for offset in starts if is_record_start(stream, offset, 16 << 20)] == starts
        assert not any(is_record_start(stream, offset, 16 << 20) for offset in false_headers)
    plain = samples["mixed.warc"].read_bytes()
    line_starts = [match.start() + 1 for match in re.finditer(rb"\nWARC/", plain)]
    with open(samples["mixed.warc"], "rb") as stream:
        accepted = [offset for offset in line_starts if is_record_start(stream, offset, 16 << 20)]
    [refused] = [offset for offset in line_starts if offset not in accepted]
    assert plain[refused - 1_000:refused].endswith(b"<pre>\n")  # only the header quoted in a page


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["mixed.warc.gz", "mixed.warc", "misframed-long.warc.gz", "misframed-short.warc",
                             "sample.warc.wet.gz", "cut.warc.gz"]), fraction=st.floats(0.004, 1.0))
def test_any_split_reads_the_unsplit_files_documents_ids_ledger_and_counts(samples, name: str, fraction: float) -> None:
    path = samples[name]
    stage = stage_for(path, max(1, int(path.stat().st_size * fraction)))
    sources = stage.list_inputs()
    assert all(source_file(source) == str(path) for source in sources)
    kept, rejected, stats = read_sources(stage, sources)
    whole_kept, whole_rejected, whole_stats = read_unsplit(path)
    assert kept.equals(whole_kept)  # same documents, ids, text and order
    assert rejected == whole_rejected
    assert stats == whole_stats  # input documents and every record type
    assert whole_kept.num_rows > 0 and stats[INPUT_DOCUMENTS_STAT] == kept.num_rows + len(rejected)


def test_every_piece_keeps_the_ledger_and_the_fixtures_exercise_what_they_should(samples) -> None:
    path = samples["mixed.warc.gz"]
    stage = stage_for(path, -(-path.stat().st_size // 40))
    sources = stage.list_inputs()
    owned = []
    for source in sources:
        kept, rejected, stats = read_sources(stage, [source])
        assert stats.get(INPUT_DOCUMENTS_STAT, 0) == kept.num_rows + len(rejected)
        owned.append(kept.num_rows + len(rejected))
    assert len(sources) == 40 and owned.count(0) >= 5  # pieces inside the large binary record own nothing
    _, rejected, _ = read_unsplit(path)
    reasons = {reason for _, reason, _ in rejected}
    assert {"not_html", "malformed_record", "http_status"} <= reasons
    assert any(detail and re.fullmatch(r"at byte \d+: no WARC-Record-ID", detail) for _, _, detail in rejected)
    assert {reason for _, reason, _ in read_unsplit(samples["misframed-long.warc.gz"])[1]} == {"bad_content_length"}
    assert {reason for _, reason, _ in read_unsplit(samples["cut.warc.gz"])[1]} == {"truncated"}


def test_a_damaged_member_costs_the_rest_of_its_piece_not_of_the_file(tmp_path) -> None:
    """Unsplit, reading stops at a corrupt member; split, the pieces after it start at their own records."""
    whole = write_warc(tmp_path / "whole.warc.gz", good_captures(20))
    data = bytearray(whole.read_bytes())
    starts = member_starts(bytes(data))
    middle = starts[len(starts) // 3]
    data[middle + 30: middle + 60] = b"\x00" * 30
    path = tmp_path / "damaged.warc.gz"
    path.write_bytes(bytes(data))
    unsplit_kept, unsplit_rejected, _ = read_unsplit(path)
    stage = stage_for(path, len(data) // 4)
    kept, rejected, _ = read_sources(stage, stage.list_inputs())
    assert [reason for _, reason, _ in rejected] == [reason for _, reason, _ in unsplit_rejected] == ["truncated"]
    assert kept.slice(0, unsplit_kept.num_rows).equals(unsplit_kept)
    assert unsplit_kept.num_rows < kept.num_rows < 20


# Remote files and the runner.

class FlakyFile:
    """A remote file whose every third read fails, like a connection that drops now and then."""

    reads = 0

    def __init__(self, file):
        self.file = file

    def read(self, size=-1):
        FlakyFile.reads += 1
        if FlakyFile.reads % 3 == 0:
            raise ConnectionResetError("connection reset by peer")
        return self.file.read(size)

    def __getattr__(self, name):
        return getattr(self.file, name)


class FlakyPieces(MemoryFileSystem):
    """An in-memory filesystem read through FlakyFile, opened afresh for every piece and every retry."""

    protocol = "flaky-pieces"

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.replace("flaky-pieces://", "memory://", 1))

    def _open(self, path, mode="rb", **kwargs):
        return FlakyFile(super()._open(path, mode, **kwargs))


def test_a_remote_file_is_split_and_read_with_seeks_and_retries(samples, monkeypatch) -> None:
    monkeypatch.setattr(ingest, "RETRY_BACKOFF_S", 0.001)
    local = samples["mixed.warc.gz"]
    memory = fsspec.filesystem("memory")
    memory.pipe("/split/mixed.warc.gz", local.read_bytes())
    fsspec.register_implementation("flaky-pieces", FlakyPieces, clobber=True)
    memory.pipe("/flaky/mixed.warc.gz", local.read_bytes())
    try:
        for url in ("memory:///split/mixed.warc.gz", "flaky-pieces:///flaky/mixed.warc.gz"):
            stage = stage_for(url, -(-local.stat().st_size // 6), network_retries=3)
            sources = stage.list_inputs()
            assert len(sources) == 6 and all(source.startswith(url + "#bytes=") for source in sources)
            kept, rejected, stats = read_sources(stage, sources)
            whole_kept, whole_rejected, whole_stats = read_unsplit(local)
            assert kept.drop_columns(["warc_file"]).equals(whole_kept.drop_columns(["warc_file"]))
            # The ids of records without a WARC-Record-ID name the file they are in, so only those differ.
            assert sorted(row[1:] for row in rejected) == sorted(row[1:] for row in whole_rejected)
            assert stats == whole_stats
    finally:
        memory.rm("/split", recursive=True)
        memory.rm("/flaky", recursive=True)


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files as object stores and CDNs do: `Range: bytes=A-B` gets 206 and those bytes alone."""

    ranges: list[str] = []

    def do_GET(self) -> None:
        requested = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if requested is None:
            return super().do_GET()
        data = Path(self.translate_path(self.path)).read_bytes()
        start = int(requested[1])
        end = min(int(requested[2]) + 1 if requested[2] else len(data), len(data))
        RangeHandler.ranges.append(f"{start}-{end}")
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        self.wfile.write(data[start:end])

    def log_message(self, *args) -> None:
        pass


def test_a_file_served_over_http_is_split_and_read_by_range_requests(samples) -> None:
    local = samples["mixed.warc.gz"]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(local.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{local.name}"
        stage = stage_for(url, -(-local.stat().st_size // 4), network_retries=0, network_timeout_s=10)
        sources = stage.list_inputs()
        assert len(sources) == 4
        RangeHandler.ranges.clear()
        read_sources(stage, sources[2:])  # the magic is read in a small block, the rest from the pieces on
        fetched = [tuple(map(int, fetched.split("-"))) for fetched in RangeHandler.ranges]
        third_piece_start = parse_source(sources[2])[1].start
        assert {start for start, _ in fetched} - {0} and all(
            end <= (64 << 10) + 16 if start == 0 else start >= third_piece_start for start, end in fetched)
        kept, rejected, stats = read_sources(stage, sources)
        whole_kept, whole_rejected, whole_stats = read_unsplit(local)
        assert kept.drop_columns(["warc_file"]).equals(whole_kept.drop_columns(["warc_file"])) and stats == whole_stats
    finally:
        server.shutdown()


def write_graph(root: Path, inputs: Path, split_bytes: int) -> Path:
    graph = root / f"graph-{split_bytes}.yaml"
    graph.write_text(f"plugins: [gristmill.stages.ingest.ingest]\nstages:\n  ingest:\n    stage: ingest\n"
                     f"    params: {{paths: ['{inputs}/*.warc*'], split_bytes: {split_bytes}}}\n")
    return graph


def shard_records(dataset: Path) -> list[dict]:
    """Every shard record as written, less the time it took."""
    return [record.model_dump(exclude={"seconds"}) for record in Dataset(dataset).manifest().shards]


def all_rows(dataset: Path, directory: str = "") -> pa.Table:
    return pa.concat_tables(pq.read_table(path) for path in sorted((dataset / directory).glob("part-*.parquet")))


def test_a_split_run_writes_the_unsplit_documents_and_the_same_bytes_in_process_and_on_two_workers(
    samples, tmp_path
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("mixed.warc.gz", "mixed.warc", "sample.warc.wet.gz"):
        (inputs / name).write_bytes(samples[name].read_bytes())
    split_bytes = (inputs / "mixed.warc.gz").stat().st_size // 5
    run_graph(load_graph(write_graph(tmp_path, inputs, 0), tmp_path / "whole"), InProcessExecutor(), console=QUIET)
    graph = write_graph(tmp_path, inputs, split_bytes)
    run_graph(load_graph(graph, tmp_path / "inprocess"), InProcessExecutor(), console=QUIET)
    with make_executor("local", workers=2) as pool:
        run_graph(load_graph(graph, tmp_path / "local"), pool, console=QUIET)

    assert data_files(tmp_path / "local") == data_files(tmp_path / "inprocess")
    assert shard_records(tmp_path / "local" / "ingest") == shard_records(tmp_path / "inprocess" / "ingest")
    split, whole = Dataset(tmp_path / "inprocess" / "ingest"), Dataset(tmp_path / "whole" / "ingest")
    sources = [record.source for record in split.manifest().shards]
    assert sum("#bytes=" in source for source in sources) >= 10 and len(whole.manifest().shards) == 3
    for record in split.manifest().shards:  # the ledger holds per piece
        assert record.rows_in == record.documents_out + sum(record.rejected.values())
        assert parse_source(record.source)[0].startswith(str(inputs))
    assert all_rows(split.path).equals(all_rows(whole.path))
    ledger = ["id", "reason", "detail"]
    assert sorted(all_rows(split.path, "_rejects").select(ledger).to_pylist(), key=str) == sorted(
        all_rows(whole.path, "_rejects").select(ledger).to_pylist(), key=str)
    assert split.manifest().rows_in == whole.manifest().rows_in
