"""Deterministic WARC and WET files for the ingest tests, written with warcio's WARCWriter.

They hold every record kind Common Crawl writes and one capture per kind of bad input, byte-identical for the same arguments.
"""

from __future__ import annotations

import gzip
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from io import BytesIO
from pathlib import Path

from fastwarc.warc import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

CRAWL = "CC-MAIN-2024-10"
START = datetime(2024, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://gristmill.invalid/tests/warc")
NAV_TEXT = "Home News Sport Weather Contact"
COOKIE_TEXT = "This site uses cookies to remember your preferences."
FOOTER_TEXT = "Copyright 2024 Example Publishing. All rights reserved."
SENTENCES = (
    "The river rose two metres overnight after three days of heavy rain in the hills.",
    "Volunteers filled sandbags outside the old mill while the council opened the school as a shelter.",
    "Farmers along the valley moved their cattle to higher fields before dawn.",
    "The regional railway suspended services between the two market towns until the water recedes.",
    "Engineers will inspect the stone bridge once the current slows, a spokesperson said.",
    "Residents were asked to boil tap water as a precaution until further notice.",
    "The bakery on the high street handed out bread to families who had left their homes.",
    "Forecasters expect drier weather from Thursday, although more showers are possible at the weekend.",
    "Insurance assessors are due to visit the worst affected streets next week.",
    "A local historian noted that the last flood of this size was recorded more than a century ago.",
)
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde\x00"
       b"\x00\x00\x0cIDATx\xdac\xf8\xdf\xc0\x00\x00\x04\x01\x01\x80\xfb\xd7\xcb\xf1\x00\x00\x00\x00IEND\xaeB`\x82")


def record_id(name: str) -> str:
    return f"<urn:uuid:{uuid.uuid5(NAMESPACE, name)}>"


def article(title: str, paragraphs: list[str], meta_charset: str | None = "utf-8") -> str:
    """A news page with navigation, a cookie banner and a footer around the article."""
    meta = f'<meta charset="{meta_charset}">' if meta_charset else ""
    body = "".join(f"<p>{paragraph}</p>" for paragraph in paragraphs)
    nav = "".join(f'<li><a href="/{word.lower()}">{word}</a></li>' for word in NAV_TEXT.split())
    return (
        f"<!DOCTYPE html><html><head>{meta}<title>{title}</title><script>var tracking = 1;</script></head><body>"
        f'<div class="cookie-banner"><p>{COOKIE_TEXT}</p><button>Accept</button></div>'
        f"<header><nav><ul>{nav}</ul></nav></header>"
        f"<main><article><h1>{title}</h1>{body}</article></main>"
        f"<footer><p>{FOOTER_TEXT}</p></footer></body></html>"
    )


@dataclass(frozen=True)
class Capture:
    """One fetch: the response body and the headers that decide what ingest does with it."""

    name: str
    body: bytes
    status: str = "200 OK"
    content_type: str | None = "text/html; charset=utf-8"
    payload_type: str | None = "text/html"
    http_headers: tuple[tuple[str, str], ...] = ()

    @property
    def url(self) -> str:
        return f"https://news.example.org/2024/{self.name}"


def good_captures(count: int, seed: int = 0) -> list[Capture]:
    """Articles of three to six sentences, each unique in its first sentence and title."""
    rng = random.Random(seed)
    captures = []
    for index in range(count):
        paragraphs = [f"Report number {seed}-{index} from the valley."] + rng.sample(SENTENCES, rng.randint(3, 6))
        captures.append(Capture(f"article-{seed}-{index}", article(f"Flood report {index}", paragraphs).encode()))
    return captures


def bad_captures() -> dict[str, Capture]:
    """One capture per rejection a WARC response can get, keyed by the expected reason."""
    rng = random.Random(7)
    undecodable = bytes(rng.choice(range(0x80, 0x100)) for _ in range(2_000))
    nested = "<html><body>" + "<div>deep " * 1_500 + "</body></html>"
    return {
        "http_status": Capture("missing-page", b"<html><body><p>Not found</p></body></html>", status="404 Not Found"),
        "not_html": Capture("logo.png", PNG, content_type="image/png", payload_type="image/png"),
        "empty_body": Capture("empty", b""),
        "binary_payload": Capture("mislabelled.png", PNG),
        "undecodable": Capture("garbled", b"<html><body><p>" + undecodable + b"</p></body></html>"),
        "no_text": Capture("scripts-only", b"<html><head><script>var a = 1;</script></head><body></body></html>"),
        "too_deep": Capture("nested-divs", nested.encode()),
    }


def _write_capture(writer: WARCWriter, capture: Capture, when: datetime) -> None:
    """Request, response and metadata, as Common Crawl writes one fetch."""
    date = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    path = "/" + capture.url.split("/", 3)[3]
    request = StatusAndHeaders(f"GET {path} HTTP/1.1", [("Host", "news.example.org"), ("User-Agent", "CCBot/2.0")],
                               is_http_request=True)
    writer.write_record(writer.create_warc_record(capture.url, "request", http_headers=request, warc_headers_dict={
        "WARC-Record-ID": record_id(capture.name + "/request"), "WARC-Date": date}))
    headers = [("Date", format_datetime(when, usegmt=True))]
    if capture.content_type is not None:
        headers.append(("Content-Type", capture.content_type))
    headers += [*capture.http_headers, ("Content-Length", str(len(capture.body)))]
    warc_headers = {"WARC-Record-ID": record_id(capture.name), "WARC-Date": date,
                    "WARC-Concurrent-To": record_id(capture.name + "/request")}
    if capture.payload_type is not None:
        warc_headers["WARC-Identified-Payload-Type"] = capture.payload_type
    writer.write_record(writer.create_warc_record(
        capture.url, "response", payload=BytesIO(capture.body), length=len(capture.body),
        http_headers=StatusAndHeaders(capture.status, headers, protocol="HTTP/1.1"), warc_headers_dict=warc_headers))
    fields = b"fetchTimeMs: 120\r\n"
    writer.write_record(writer.create_warc_record(
        capture.url, "metadata", payload=BytesIO(fields), length=len(fields), warc_content_type="application/warc-fields",
        warc_headers_dict={"WARC-Record-ID": record_id(capture.name + "/metadata"), "WARC-Date": date,
                           "WARC-Concurrent-To": record_id(capture.name)}))


def _write_warcinfo(writer: WARCWriter, filename: str) -> None:
    info = f"isPartOf: {CRAWL}\r\nsoftware: gristmill-tests\r\n".encode()
    writer.write_record(writer.create_warc_record(
        "", "warcinfo", payload=BytesIO(info), length=len(info), warc_content_type="application/warc-fields",
        warc_headers_dict={"WARC-Record-ID": record_id(filename + "/warcinfo"), "WARC-Date": "2024-03-01T12:00:00Z",
                           "WARC-Filename": filename}))


def write_warc(path: Path, captures: list[Capture], compress: bool = True, side_records: bool = True) -> Path:
    """A Common-Crawl-like WARC: warcinfo, then request/response/metadata per capture.

    With side_records, a revisit of the first capture and a resource record follow: neither is a document.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=compress)
        _write_warcinfo(writer, path.name)
        for index, capture in enumerate(captures):
            _write_capture(writer, capture, START + timedelta(seconds=index))
        if side_records and captures:
            first = captures[0]
            revisit = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
            writer.write_record(writer.create_revisit_record(
                first.url, "sha1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", first.url, "2024-03-01T12:00:00Z",
                http_headers=revisit, warc_headers_dict={"WARC-Record-ID": record_id(first.name + "/revisit"),
                                                         "WARC-Date": "2024-03-02T12:00:00Z"}))
            log = b"crawl finished\n"
            writer.write_record(writer.create_warc_record(
                "urn:x-gristmill:crawl-log", "resource", payload=BytesIO(log), length=len(log),
                warc_content_type="text/plain", warc_headers_dict={"WARC-Record-ID": record_id(path.name + "/log"),
                                                                   "WARC-Date": "2024-03-02T12:00:00Z"}))
    return path


def write_wet(path: Path, texts: list[tuple[str, str]]) -> Path:
    """A WET file: warcinfo, then one conversion record per (name, text)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        _write_warcinfo(writer, path.name)
        for index, (name, text) in enumerate(texts):
            payload = text.encode()
            writer.write_record(writer.create_warc_record(
                f"https://news.example.org/2024/{name}", "conversion", payload=BytesIO(payload), length=len(payload),
                warc_content_type="text/plain", warc_headers_dict={
                    "WARC-Record-ID": record_id(name + "/conversion"), "WARC-Refers-To": record_id(name),
                    "WARC-Date": (START + timedelta(seconds=index)).strftime("%Y-%m-%dT%H:%M:%SZ")}))
    return path


def raw_record(headers: list[tuple[str, str]], block: bytes, compress: bool = True) -> bytes:
    """A record written by hand, for headers no WARC writer would produce; one gzip member when compressed."""
    head = "WARC/1.0\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
    record = head.encode() + block + b"\r\n\r\n"
    return gzip.compress(record, mtime=0) if compress else record


def response_block(body: bytes, content_type: str = "text/html; charset=utf-8") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def write_misframed_warc(path: Path, captures: list[Capture], damaged: int, length_error: str, compression: str) -> Path:
    """A Common-Crawl-like WARC whose response for captures[damaged] declares a wrong Content-Length.

    length_error "long" runs the record 200 bytes into the next response's header (swallowing the
    metadata and request between); "short" ends it 500 bytes before its payload does. compression is
    "none", "record" (one gzip member per record, as Common Crawl writes) or "file" (one member).
    """
    plain = write_warc(path.with_name(path.name + ".plain"), captures, compress=False, side_records=False)
    data = plain.read_bytes()
    plain.unlink()
    starts = [(record.stream_pos, str(record.record_type)) for record in ArchiveIterator(BytesIO(data))]
    bounds = [start for start, _ in starts] + [len(data)]
    records = [data[start:end] for start, end in zip(bounds, bounds[1:])]
    responses = [index for index, (_, kind) in enumerate(starts) if kind == "response"]
    target = responses[damaged]
    header_end = records[target].index(b"\r\n\r\n") + 2  # after the last header line's CRLF
    declared = len(records[target]) - header_end - 6  # the block, without the blank line and the closing CRLFs
    if length_error == "long":
        wrong = declared + 4 + sum(len(record) for record in records[target + 1:responses[damaged + 1]]) + 200
    else:
        wrong = declared - 500
    head = records[target][:header_end].replace(f"Content-Length: {declared}\r\n".encode(),
                                                f"Content-Length: {wrong}\r\n".encode())
    assert head != records[target][:header_end], "no WARC Content-Length to change"
    records[target] = head + records[target][header_end:]
    if compression == "record":
        payload = b"".join(gzip.compress(record, mtime=0) for record in records)
    elif compression == "file":
        payload = gzip.compress(b"".join(records), mtime=0)
    else:
        payload = b"".join(records)
    path.write_bytes(payload)
    return path
