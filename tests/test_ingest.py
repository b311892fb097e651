"""The ingest stage: which WARC/WET records become documents, why the others are rejected, and that no input crashes it."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import http.server
import json
import logging
import re
import threading
import time
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import gristmill.stages.ingest.ingest  # noqa: F401  (registers the stage; stages/__init__.py does not import it yet)
from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.documents import document_id
from gristmill.pipeline.engine.executors import InProcessExecutor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.pipeline.demo.sample import write_sample
from gristmill.pipeline.engine.tasks import ShardTask, run_task
from gristmill.stages.ingest import ingest
from gristmill.stages.ingest.html_extract import MAX_DIV_NESTING, HtmlExtractor, decode_html, div_nesting
from gristmill.stages.ingest.ingest import SCHEMA, Ingest, IngestConfig, dechunk, http_payload
from tests.warc_fixtures import (
    COOKIE_TEXT,
    CRAWL,
    FOOTER_TEXT,
    Capture,
    article,
    bad_captures,
    good_captures,
    raw_record,
    record_id,
    response_block,
    write_misframed_warc,
    write_warc,
    write_wet,
)

SHARED_WARC = Path(__file__).resolve().parents[2] / "shared" / "data" / "warc"
READERS = ("fastwarc", "warcio")


def read_all(path: str | Path, **params) -> tuple[pa.Table, dict[str, tuple[str, str | None]]]:
    """Kept documents and {ledger id: (reason, detail)} of one input read by the stage."""
    stage = Ingest(IngestConfig(paths=[str(path)], **params))
    stage.setup()
    results = list(stage.read(str(path)))
    kept = pa.concat_tables([result.kept for result in results]) if results else SCHEMA.empty_table()
    rejected = {}
    for result in results:
        for row in result.rejected.to_pylist():
            rejected[row["id"]] = (row["reason"], row["detail"])
    return kept, rejected


def reasons(rejected: dict[str, tuple[str, str | None]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reason, _ in rejected.values():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def response_offsets(path: Path) -> list[int]:
    from fastwarc.warc import ArchiveIterator

    with open(path, "rb") as handle:
        return [record.stream_pos for record in ArchiveIterator(handle) if str(record.record_type) == "response"]


@pytest.mark.parametrize("reader", READERS)
def test_good_captures_become_documents_without_boilerplate(tmp_path: Path, reader: str) -> None:
    captures = good_captures(3)
    path = write_warc(tmp_path / "news.warc.gz", captures)
    kept, rejected = read_all(path, reader=reader)
    assert rejected == {}
    assert kept.schema.equals(SCHEMA)
    rows = kept.to_pylist()
    assert [row["id"] for row in rows] == [document_id(record_id(capture.name)) for capture in captures]
    first = rows[0]
    assert first["url"] == "https://news.example.org/2024/article-0-0"
    assert first["domain"] == "news.example.org"
    assert first["source"] == "news"
    assert first["fetch_time"].isoformat() == "2024-03-01T12:00:00+00:00"
    assert (first["http_status"], first["warc_record_id"], first["warc_file"]) == (200, record_id("article-0-0"), str(path))
    assert first["lang"] is None and first["lang_score"] is None
    for row in rows:
        assert row["text"].startswith("Flood report")
        assert "from the valley." in row["text"]
        for boilerplate in (COOKIE_TEXT, FOOTER_TEXT, "Sport", "Contact", "tracking"):
            assert boilerplate not in row["text"]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("compress", [True, False])
def test_each_bad_capture_gets_its_reason_and_side_records_are_not_documents(
    tmp_path: Path, reader: str, compress: bool, caplog: pytest.LogCaptureFixture
) -> None:
    bad = bad_captures()
    good = good_captures(2)
    path = write_warc(tmp_path / f"mixed.warc{'.gz' if compress else ''}", good + list(bad.values()), compress=compress)
    with caplog.at_level(logging.INFO, logger="gristmill.stages.ingest.ingest"):
        kept, rejected = read_all(path, reader=reader)
    assert kept.column("id").to_pylist() == [document_id(record_id(capture.name)) for capture in good]
    assert {document_id(record_id(capture.name)): reason for reason, capture in bad.items()} == {
        row_id: reason for row_id, (reason, _) in rejected.items()
    }
    details = {reason: detail for reason, detail in rejected.values()}
    assert details["http_status"] == "404"
    assert details["not_html"] == "image/png"
    assert details["too_deep"] == f"<div> nesting 1500 > {MAX_DIV_NESTING}"
    # Request, metadata, warcinfo, revisit and resource records are counted in the log, not the ledger.
    logged = json.loads(caplog.records[-1].getMessage().removeprefix("ingest "))
    captures = len(good) + len(bad)
    assert logged["records"] == {"metadata": captures, "request": captures, "resource": 1, "response": captures,
                                 "revisit": 1, "warcinfo": 1}


@pytest.mark.parametrize("reader", READERS)
def test_pages_at_the_size_limit_are_rejected(tmp_path: Path, reader: str) -> None:
    small = Capture("small", article("Small page", ["A short report from the valley."]).encode())
    large = Capture("large", article("Large page", ["A long report from the valley. " * 200]).encode())
    path = write_warc(tmp_path / "sizes.warc.gz", [small, large])
    kept, rejected = read_all(path, reader=reader, max_page_bytes=2_000)
    assert kept.column("id").to_pylist() == [document_id(record_id("small"))]
    reason, detail = rejected[document_id(record_id("large"))]
    assert reason == "too_large" and re.fullmatch(r"\d+ bytes >= 2000", detail)


@pytest.mark.parametrize("reader", READERS)
def test_redirects_and_untyped_payloads(tmp_path: Path, reader: str) -> None:
    html = article("Untyped page", ["Served without any content type at all."]).encode()
    captures = [
        Capture("moved", b"<html><body>Moved</body></html>", status="301 Moved Permanently"),
        Capture("untyped-html", html, content_type=None, payload_type=None),
        Capture("untyped-text", b"just some plain words", content_type=None, payload_type=None),
        Capture("xhtml", html, content_type="application/xhtml+xml", payload_type=""),
    ]
    kept, rejected = read_all(write_warc(tmp_path / "types.warc.gz", captures), reader=reader)
    assert kept.column("id").to_pylist() == [document_id(record_id(name)) for name in ("untyped-html", "xhtml")]
    assert sorted(rejected.values()) == [("http_status", "301"), ("not_html", "no content type and no HTML markup")]


@pytest.mark.parametrize("reader", READERS)
def test_chunked_and_gzip_encoded_payloads_are_decoded(tmp_path: Path, reader: str) -> None:
    html = article("Encoded page", ["Sent gzip-compressed in two chunks."]).encode()
    packed = gzip.compress(html, mtime=0)
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (10, packed[:10], len(packed) - 10, packed[10:])
    headers = (("Transfer-Encoding", "chunked"), ("Content-Encoding", "gzip"))
    captures = [Capture("encoded", chunked, http_headers=headers), Capture("plain", html)]
    kept, _ = read_all(write_warc(tmp_path / "encoded.warc.gz", captures), reader=reader)
    assert kept.column("text").to_pylist()[0] == kept.column("text").to_pylist()[1]
    assert "Sent gzip-compressed in two chunks." in kept.column("text").to_pylist()[0]


def test_http_payload_decoding_falls_back_to_the_raw_bytes() -> None:
    assert dechunk(b"4\r\nWiki\r\n6;ext=1\r\npedia \r\n0\r\n\r\n") == b"Wikipedia "
    assert dechunk(b"<!doctype html>not chunked") == b"<!doctype html>not chunked"
    page = b"<html>" + b"x" * 100 + b"</html>"
    assert http_payload(gzip.compress(page), None, "gzip", 1_000) == page
    assert http_payload(page, None, "gzip", 1_000) == page  # ClueWeb: says gzip, stores it decoded
    assert len(http_payload(gzip.compress(page), None, "gzip", 50)) == 50  # capped, so a zip bomb stays small


@pytest.mark.parametrize("reader", READERS)
def test_wet_conversion_records_are_documents_as_they_are(tmp_path: Path, reader: str) -> None:
    texts = [("first", "Le marché ouvre à sept heures.\nLes légumes arrivent des fermes voisines."),
             ("empty", "   \n"), ("second", "Второй документ на русском языке.")]
    kept, rejected = read_all(write_wet(tmp_path / "sample.warc.wet.gz", texts), reader=reader)
    assert kept.column("text").to_pylist() == [texts[0][1], texts[2][1]]
    assert kept.column("http_status").to_pylist() == [None, None]
    assert kept.column("warc_record_id").to_pylist() == [record_id("first/conversion"), record_id("second/conversion")]
    assert rejected == {document_id(record_id("empty/conversion")): ("no_text", None)}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("damage", ["cut", "corrupt"])
def test_a_damaged_gzip_file_keeps_every_record_before_the_damage(tmp_path: Path, reader: str, damage: str) -> None:
    captures = good_captures(10)
    whole = write_warc(tmp_path / "whole.warc.gz", captures)
    data = whole.read_bytes()
    seventh = response_offsets(whole)[6]
    if damage == "cut":
        damaged = data[: seventh + 100]
    else:
        damaged = data[: seventh + 60] + b"\x00" * 40 + data[seventh + 100:]
    path = tmp_path / "damaged.warc.gz"
    path.write_bytes(damaged)
    kept, rejected = read_all(path, reader=reader)
    assert kept.column("id").to_pylist() == [document_id(record_id(capture.name)) for capture in captures[:6]]
    assert kept.column("text").to_pylist() == read_all(whole)[0].column("text").to_pylist()[:6]
    assert [reason for reason, _ in rejected.values()] == ["truncated"]
    assert f"at byte {seventh}" in next(iter(rejected.values()))[1]


@pytest.mark.parametrize("reader", READERS)
def test_an_uncompressed_file_cut_inside_a_page(tmp_path: Path, reader: str) -> None:
    captures = good_captures(4)
    data = write_warc(tmp_path / "whole.warc", captures, compress=False, side_records=False).read_bytes()
    cut = data.index(b"from the valley.", data.index(b"Report number 0-3")) + 5
    path = tmp_path / "cut.warc"
    path.write_bytes(data[:cut])
    kept, rejected = read_all(path, reader=reader)
    assert kept.num_rows == 3
    assert [reason for reason, _ in rejected.values()] == ["truncated"]


@pytest.mark.parametrize("reader", READERS)
def test_malformed_records_and_files(tmp_path: Path, reader: str) -> None:
    whole = write_warc(tmp_path / "whole.warc.gz", good_captures(2)).read_bytes()
    block = response_block(b"<html><body><p>A page whose record has no id.</p></body></html>")
    no_id = raw_record([("WARC-Type", "response"), ("WARC-Target-URI", "https://x.example/"),
                        ("Content-Type", "application/http; msgtype=response"), ("Content-Length", str(len(block)))],
                       block)
    (tmp_path / "no-id.warc.gz").write_bytes(whole + no_id)
    kept, rejected = read_all(tmp_path / "no-id.warc.gz", reader=reader)
    assert kept.num_rows == 2 and reasons(rejected) == {"malformed_record": 1}
    assert "no WARC-Record-ID" in next(iter(rejected.values()))[1]

    no_type = raw_record([("WARC-Record-ID", record_id("no-type")), ("Content-Length", "4")], b"abcd")
    (tmp_path / "no-type.warc.gz").write_bytes(whole + no_type)
    kept, rejected = read_all(tmp_path / "no-type.warc.gz", reader=reader)
    assert kept.num_rows == 2 and reasons(rejected) == {"malformed_record": 1}

    (tmp_path / "junk.warc.gz").write_bytes(whole + b"trailing bytes that are not gzip")
    kept, rejected = read_all(tmp_path / "junk.warc.gz", reader=reader)
    assert kept.num_rows == 2 and reasons(rejected) == {"truncated": 1}

    (tmp_path / "text.warc").write_text("this is a plain text file, not a WARC\n" * 5)
    kept, rejected = read_all(tmp_path / "text.warc", reader=reader)
    assert kept.num_rows == 0 and len(rejected) >= 1

    kept, rejected = read_all(tmp_path / "missing.warc.gz", reader=reader)
    assert kept.num_rows == 0 and reasons(rejected) == {"read_failed": 1}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.floats(0, 1), length=st.integers(1, 64), byte=st.integers(0, 255), cut=st.booleans(),
       reader=st.sampled_from(READERS))
def test_no_damage_crashes_the_reader(tmp_path: Path, position: float, length: int, byte: int, cut: bool,
                                      reader: str) -> None:
    original = write_warc(tmp_path / "whole.warc.gz", good_captures(4))
    data = original.read_bytes()
    at = int(position * (len(data) - 1))
    damaged = data[:at] if cut else data[:at] + bytes([byte]) * length + data[at + length:]
    path = tmp_path / "damaged.warc.gz"
    path.write_bytes(damaged)
    kept, rejected = read_all(path, reader=reader)
    originals = dict(zip(*read_all(original)[0].select(["id", "text"]).to_pydict().values()))
    for row_id, text in zip(kept.column("id").to_pylist(), kept.column("text").to_pylist()):
        assert originals[row_id] == text
    assert set(kept.column("id").to_pylist()).isdisjoint(rejected)


def test_readers_give_the_same_documents_on_good_files(tmp_path: Path) -> None:
    sample = write_sample(tmp_path / "sample", pages=120, seed=3)
    files = [sample.warc_path, write_warc(tmp_path / "plain.warc", good_captures(5), compress=False)]
    for path in files:
        by_reader = [read_all(path, reader=reader) for reader in READERS]
        assert by_reader[0][0].equals(by_reader[1][0])
        assert by_reader[0][1] == by_reader[1][1]
        assert by_reader[0][0].num_rows > 0


def test_sample_extraction_recalls_the_article_and_drops_the_boilerplate(tmp_path: Path) -> None:
    sample = write_sample(tmp_path / "sample", pages=200, seed=0)
    truth = [json.loads(line) for line in sample.jsonl_path.read_text().splitlines()]
    kept, rejected = read_all(sample.warc_path)
    assert kept.num_rows == len(truth)
    assert reasons(rejected) == {"http_status": sample.kinds["not_found"] + sample.kinds["redirect"],
                                 "not_html": sample.kinds["binary"]}
    texts = dict(zip(kept.column("url").to_pylist(), kept.column("text").to_pylist()))
    found = total = 0
    for page in truth:
        text = " ".join(texts[page["url"]].split())
        paragraphs = [" ".join(part.split()) for part in page["text"].split("\n\n") if part.strip()]
        if page["kind"] == "prose":
            total += len(paragraphs)
            found += sum(paragraph in text for paragraph in paragraphs)
        for boilerplate in ("We use cookies", "All rights reserved", "Privacy policy", "Subscribe to our newsletter"):
            assert boilerplate not in text, page["url"]
    assert total > 200 and found / total >= 0.97


def test_charsets_declared_then_detected() -> None:
    russian = "Пожарная безопасность предприятия: обучение, проверка и обслуживание систем. " * 20
    assert decode_html(russian.encode("cp1251"), "windows-1251") == (russian, "cp1251")
    japanese = "<html><head><meta charset='shift_jis'></head><body>吉田カバンの新作が入荷しました</body></html>"
    assert decode_html(japanese.encode("shift_jis"), None) == (japanese, "shift_jis")
    assert decode_html(russian.encode("cp1251"), None)[0] == russian  # undeclared: detected
    assert decode_html("café".encode(), "no-such-charset") == ("café", "utf-8")
    # HTTP says latin-1 (which browsers read as cp1252): the header wins over the bytes' own look.
    assert decode_html("naïve".encode("cp1252"), "iso-8859-1") == ("naïve", "cp1252")
    text, codec = decode_html(bytes(range(0x80, 0x100)) * 8, "utf-8")
    assert text is None and codec == "utf-8"


def test_div_nesting_counts_open_divs_only_when_there_are_many() -> None:
    assert div_nesting("<div><div></div></div>") == 0  # too few divs to bother scanning
    deep = "<DIV>" * 600 + "</div>" * 600 + "<div class=x>" * 1_200 + "<divider>"
    assert div_nesting(deep) == 1_200


@pytest.mark.parametrize("in_thread", [False, True])
def test_the_time_limit_interrupts_python_code_in_any_thread(monkeypatch: pytest.MonkeyPatch, in_thread: bool) -> None:
    def spin(html: str) -> str:
        while True:
            pass

    extractor = HtmlExtractor("resiliparse", timeout_s=0.2)
    monkeypatch.setattr(extractor, "extract_text", spin)
    outcome = {}

    def run() -> None:
        started = time.monotonic()
        outcome["result"] = extractor.extract("<html></html>")
        outcome["seconds"] = time.monotonic() - started

    if in_thread:
        thread = threading.Thread(target=run)
        thread.start()
        thread.join(5)
    else:
        run()
    assert outcome["result"] == (None, "extraction_timeout", "interrupted at the 0.2 s limit")
    assert 0.2 <= outcome["seconds"] < 1.0


def test_the_time_limit_leaves_fast_extractions_alone_and_rejects_overruns(monkeypatch: pytest.MonkeyPatch) -> None:
    extractor = HtmlExtractor("resiliparse", timeout_s=0.05)
    assert extractor.extract(article("Quick page", ["Nothing slow here."]))[0].startswith("Quick page")
    monkeypatch.setattr(extractor, "extract_text", lambda html: html)
    assert all(extractor.extract("<p>fast</p>") == ("<p>fast</p>", None, None) for _ in range(300))
    # Pages finishing right around the deadline race the watchdog: each must be a timeout, and no
    # interrupt may escape into later code (the sleep below would raise it).
    monkeypatch.setattr(extractor, "extract_text", lambda html: time.sleep(0.06) or "late")
    assert {extractor.extract("<p>slow</p>")[1] for _ in range(10)} == {"extraction_timeout"}
    time.sleep(0.3)

    monkeypatch.setattr(extractor, "extract_text", lambda html: html.encode("ascii").decode())
    assert extractor.extract("<p>é</p>")[:2] == (None, "extraction_failed")


def test_trafilatura_extracts_the_article(tmp_path: Path) -> None:
    path = write_warc(tmp_path / "news.warc.gz", good_captures(2))
    kept, _ = read_all(path, extractor="trafilatura")
    assert kept.num_rows == 2
    for text in kept.column("text").to_pylist():
        assert "from the valley." in text and COOKIE_TEXT not in text and FOOTER_TEXT not in text


def test_config_needs_exactly_one_input_kind() -> None:
    with pytest.raises(ValidationError, match="exactly one of paths and crawl"):
        IngestConfig()
    with pytest.raises(ValidationError, match="exactly one of paths and crawl"):
        IngestConfig(paths=["a.warc.gz"], crawl=CRAWL)
    with pytest.raises(ValidationError, match="segments needs crawl"):
        IngestConfig(paths=["a.warc.gz"], segments=1)
    with pytest.raises(ValidationError, match="pattern"):
        IngestConfig(crawl="CC-MAIN-2024")
    with pytest.raises(ValidationError, match="extra"):
        IngestConfig(paths=["a.warc.gz"], main_content=False)


def write_mirror(root: Path) -> list[str]:
    """A local copy of a crawl's layout: three WARC files over two segments, and their listings."""
    keys = [f"crawl-data/{CRAWL}/segments/1707947473347.{segment}/warc/CC-MAIN-2024-{segment}{index}.warc.gz"
            for segment, index in ((0, 0), (0, 1), (1, 0))]
    for number, key in enumerate(keys):
        write_warc(root / key, good_captures(2, seed=number))
    listing = root / "crawl-data" / CRAWL / "warc.paths.gz"
    listing.write_bytes(gzip.compress(("\n".join(keys) + "\n").encode(), mtime=0))
    wet_key = f"crawl-data/{CRAWL}/segments/1707947473347.0/wet/CC-MAIN-2024-00.warc.wet.gz"
    write_wet(root / wet_key, [("wet-page", "Text as Common Crawl extracted it.")])
    (root / "crawl-data" / CRAWL / "wet.paths.gz").write_bytes(gzip.compress(wet_key.encode() + b"\n", mtime=0))
    return keys


@pytest.mark.parametrize("as_url", [False, True])
def test_a_crawl_is_listed_from_its_mirror_by_segment(tmp_path: Path, as_url: bool) -> None:
    keys = write_mirror(tmp_path / "mirror")
    base = ("file://" if as_url else "") + str(tmp_path / "mirror")
    stage = Ingest(IngestConfig(crawl=CRAWL, base_url=base))
    assert stage.list_inputs() == [f"{base}/{key}" for key in keys]
    first_segment = Ingest(IngestConfig(crawl=CRAWL, base_url=base, segments=1))
    assert first_segment.list_inputs() == [f"{base}/{key}" for key in keys[:2]]
    first_segment.setup()
    kept = pa.concat_tables([result.kept for result in first_segment.read(first_segment.list_inputs()[1])])
    assert kept.column("source").to_pylist() == [CRAWL, CRAWL]
    assert kept.column("warc_file").to_pylist() == [keys[1]] * 2
    wet = Ingest(IngestConfig(crawl=CRAWL, base_url=base, format="wet"))
    wet.setup()
    [wet_file] = wet.list_inputs()
    assert [r.kept.column("text").to_pylist() for r in wet.read(wet_file)] == [["Text as Common Crawl extracted it."]]


def test_a_crawl_mirror_served_over_http(tmp_path: Path) -> None:
    keys = write_mirror(tmp_path / "mirror")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "mirror"))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        stage = Ingest(IngestConfig(crawl=CRAWL, base_url=base, network_timeout_s=5, network_retries=0))
        stage.setup()
        files = stage.list_inputs()
        assert files == [base + key for key in keys]
        kept = pa.concat_tables([result.kept for result in stage.read(files[2])])
        local = read_all(tmp_path / "mirror" / keys[2])[0]
        assert kept.column("text").equals(local.column("text"))
    finally:
        server.shutdown()


class FlakyFileSystem(MemoryFileSystem):
    """An in-memory filesystem whose every third read fails, like a connection that drops now and then."""

    protocol = "flaky"
    reads = 0

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.replace("flaky://", "memory://", 1))

    def _open(self, path, mode="rb", **kwargs):
        file = super()._open(path, mode, **kwargs)
        read = file.read

        def flaky_read(size=-1):
            FlakyFileSystem.reads += 1
            if FlakyFileSystem.reads % 3 == 0:
                raise ConnectionResetError("connection reset by peer")
            return read(size)

        file.read = flaky_read
        return file


def test_remote_urls_are_streamed_with_retries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest, "RETRY_BACKOFF_S", 0.001)
    local = write_warc(tmp_path / "news.warc.gz", good_captures(30))
    expected = read_all(local)[0].column("text")
    memory = fsspec.filesystem("memory")
    memory.pipe("/crawl/news.warc.gz", local.read_bytes())
    assert Ingest(IngestConfig(paths=["memory:///crawl/*.warc.gz"])).list_inputs() == ["memory:///crawl/news.warc.gz"]
    assert read_all("memory:///crawl/news.warc.gz")[0].column("text").equals(expected)

    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    memory.pipe("/flaky/news.warc.gz", local.read_bytes())
    kept, rejected = read_all("flaky:///flaky/news.warc.gz", network_retries=2)
    assert rejected == {} and kept.column("text").equals(expected)
    kept, rejected = read_all("flaky:///flaky/news.warc.gz", network_retries=0)
    assert reasons(rejected) == {"read_failed": 1} and kept.num_rows < 30


def test_a_run_keeps_the_ledger_invariant_and_counts_only_documents(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    write_warc(inputs / "a.warc.gz", good_captures(3) + list(bad_captures().values()))
    data = write_warc(tmp_path / "b-whole.warc.gz", good_captures(5, seed=1)).read_bytes()
    (inputs / "b.warc.gz").write_bytes(data[: len(data) // 2])
    graph = tmp_path / "graph.yaml"
    graph.write_text(f"plugins: [gristmill.stages.ingest.ingest]\nstages:\n  ingest:\n    stage: ingest\n"
                     f"    params: {{paths: ['{inputs}/*.warc.gz']}}\n")
    run_graph(load_graph(graph, tmp_path / "run"), InProcessExecutor())
    dataset = Dataset(tmp_path / "run" / "ingest")
    manifest = dataset.manifest()
    assert manifest.rows_in == manifest.rows + sum(manifest.rejected.values())
    assert manifest.rejected["truncated"] == 1
    assert {reason: manifest.rejected[reason] for reason in bad_captures()} == dict.fromkeys(bad_captures(), 1)
    half_kept = read_all(inputs / "b.warc.gz")[0].num_rows
    assert 0 < half_kept < 5
    assert [shard.rows_in for shard in manifest.shards] == [3 + len(bad_captures()), half_kept + 1]
    captures = 3 + len(bad_captures())  # every WARC record is counted by type in the shard record's stats
    assert {key: value for key, value in manifest.shards[0].stats.items() if key.startswith("records:")} == {
        "records:metadata": captures, "records:request": captures, "records:resource": 1,
        "records:response": captures, "records:revisit": 1, "records:warcinfo": 1}
    for shard in manifest.shards:
        ledger = pq.read_table(dataset.reject_path(shard.name))
        assert shard.rows_in == shard.rows + ledger.num_rows
        assert set(ledger.column("stage").to_pylist()) == {"ingest"}
    assert manifest.schema.equals(SCHEMA)


REAL_FILES = {
    # file: (documents kept, rejections, a phrase of one kept text)
    "resiliparse-warcfile.warc.gz": (16, {}, "пожарной безопасности"),
    "resiliparse-clueweb-quirk.warc.gz": (29, {}, "吉田カバン"),
    "resiliparse-clipped.warc.gz": (0, {"truncated": 1}, None),
    "resiliparse-block-sized-records.warc.gz": (0, {}, None),
    "warcio-example.warc.gz": (1, {}, "Example Domain"),
    "warcio-example-trunc.warc": (1, {}, "Example Domain"),
    "warcio-example-bad-non-chunked.warc.gz": (1, {}, "Example Domain"),
    "warcio-example-wrong-chunks.warc.gz": (1, {}, "Example Domain"),
    "warcio-example-space-in-target-uri.warc.gz": (0, {}, None),
    "warcio-example-wget-bad-target-uri.warc.gz": (1, {}, "Example Domain"),
    "warcio-example-iana.org-chunked.warc": (1, {}, "Internet Assigned Numbers Authority"),
}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_real_world_quirks(name: str, reader: str) -> None:
    path = SHARED_WARC / name
    if not path.exists():
        pytest.skip("../shared/data/warc is not beside this checkout")
    documents, rejections, phrase = REAL_FILES[name]
    kept, rejected = read_all(path, reader=reader)
    assert kept.num_rows == documents and reasons(rejected) == rejections
    if phrase is not None:
        assert any(phrase in text for text in kept.column("text").to_pylist())
    assert all(url is None or not url.startswith("<") for url in kept.column("url").to_pylist())


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("compression", ["none", "record", "file"])
@pytest.mark.parametrize("length_error", ["long", "short"])
def test_a_wrong_content_length_rejects_that_record_and_the_next_ones_are_read(
    tmp_path: Path, reader: str, compression: str, length_error: str
) -> None:
    captures = good_captures(4)
    path = write_misframed_warc(tmp_path / "misframed.warc.gz", captures, 1, length_error, compression)
    kept, rejected = read_all(path, reader=reader)
    intact = [capture for index, capture in enumerate(captures) if index != 1]
    assert kept.column("id").to_pylist() == [document_id(record_id(capture.name)) for capture in intact]
    originals = read_all(write_warc(tmp_path / "whole.warc.gz", captures))[0]
    assert kept.column("text").to_pylist() == [text for index, text in enumerate(originals.column("text").to_pylist())
                                               if index != 1]
    [(damaged, (reason, detail))] = rejected.items()
    assert (damaged, reason) == (document_id(record_id(captures[1].name)), "bad_content_length")
    declared, actual = map(int, re.fullmatch(r"declared (\d+) bytes, actual (\d+) .*", detail).groups())
    assert (declared > actual) == (length_error == "long") and abs(declared - actual) >= 200


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("length_error", ["long", "short"])
def test_a_run_over_a_misframed_warc_counts_every_response_in(tmp_path: Path, reader: str, length_error: str) -> None:
    inputs = tmp_path / "inputs"
    write_misframed_warc(inputs / "a.warc.gz", good_captures(4), 1, length_error, "record")
    dataset = run_ingest(tmp_path, inputs, reader)
    [shard] = dataset.manifest().shards
    assert (shard.rows_in, shard.rows, shard.rejected) == (4, 3, {"bad_content_length": 1})
    assert shard.stats["input_documents"] == 4


def run_ingest(tmp_path: Path, inputs: Path, reader: str = "fastwarc") -> Dataset:
    graph = tmp_path / "graph.yaml"
    graph.write_text(f"plugins: [gristmill.stages.ingest.ingest]\nstages:\n  ingest:\n    stage: ingest\n"
                     f"    params: {{paths: ['{inputs}/*.warc.gz'], reader: {reader}}}\n")
    run_graph(load_graph(graph, tmp_path / "run"), InProcessExecutor())
    return Dataset(tmp_path / "run" / "ingest")


@pytest.mark.parametrize("reader", READERS)
def test_a_record_lost_after_framing_fails_the_shard_on_the_ledger_invariant(
    tmp_path: Path, reader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_warc(tmp_path / "news.warc.gz", good_captures(4) + list(bad_captures().values()))
    task = ShardTask(node="ingest", stage="ingest", config={"paths": [str(path)], "reader": reader},
                     source=str(path), output=str(tmp_path / "out"), name="part-00000", plugins=("gristmill.stages.ingest.ingest",))
    Dataset(tmp_path / "out").prepare()
    outcome = run_task(task)
    assert outcome.error is None and outcome.record.rows_in == 4 + len(bad_captures())
    assert outcome.record.stats["input_documents"] == outcome.record.rows_in

    add_record = Ingest._add_record
    swallowed = record_id("article-0-2")

    def swallowing(self, batch, frame, warc_file, source):
        if frame.record_id != swallowed:  # as a parser that merged this record into the one before would
            add_record(self, batch, frame, warc_file, source)

    monkeypatch.setattr(Ingest, "_add_record", swallowing)
    Dataset(tmp_path / "again").prepare()
    outcome = run_task(dataclasses.replace(task, output=str(tmp_path / "again")))
    assert outcome.record is None
    expected = f"{4 + len(bad_captures())} in != 3 out + {len(bad_captures())} rejected"
    assert "broke the ledger invariant" in outcome.error and expected in outcome.error
