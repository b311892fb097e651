"""`ingest`: Common Crawl WARC/WET files (local, s3://, https://, or a whole crawl's listing) to documents.

Streams records with fastwarc (or warcio), extracts the text of HTML responses, takes WET conversions as they are,
and rejects every other page with a named reason. A file larger than `split_bytes` is read as several tasks, cut
at record boundaries (gzip members, or record headers of a plain WARC) that each task finds for itself.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import BinaryIO, Literal

import fsspec
import pyarrow as pa
from pydantic import Field, model_validator

from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA, document_id
from gristmill.pipeline.engine.input_splits import BYTES, Piece, find_in_range, parse_source, plan_each, split_by_bytes
from gristmill.pipeline.engine.stage import INPUT_DOCUMENTS_STAT, BatchResult, Resources, SourceConfig, SourceStage, register
from gristmill.stages.ingest.html_extract import Extractor, HtmlExtractor, charset_from_content_type, decode_html
from gristmill.stages.ingest.read_text import domain_of
from gristmill.stages.ingest.warc_framing import (
    DOCUMENT_TYPES,
    GZIP_MEMBER_START,
    LINE_RECORD_START,
    Frame,
    ReadProblem,
    WarcFrames,
    is_gzip,
    is_record_start,
    may_start_member_record,
    read_at,
)

logger = logging.getLogger(__name__)

BATCH_ROWS = 2_000
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
BINARY_SIGNATURES = (
    b"%PDF-", b"\x89PNG", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"PK\x03\x04", b"\x1f\x8b", b"RIFF",
    b"OggS", b"ID3", b"\x7fELF", b"wOFF", b"wOF2", b"\x00\x00\x01\x00",
)
UNICODE_BOMS = (b"\xff\xfe", b"\xfe\xff")
SNIFF_BYTES = 1024
CRAWL_ID = re.compile(r"CC-MAIN-\d{4}-\d{2}(?!\d)")
RETRY_BACKOFF_S = 1.0
# Errors no retry can fix; anything else a remote filesystem raises is retried.
PERMANENT_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
DEFAULT_SPLIT_BYTES = 1 << 30
# Compressed bytes after a gzip WARC's first cut searched for a record's member: none there means the file is
# one gzip member (or has records too large to tell), and it is read whole.
MEMBER_PROBE_BYTES = 8 << 20
# Remote block size for the small reads that decide a split (the magic, the probe); fsspec's default block is
# 5 MiB over HTTP and s3fs's 50 MiB, which a two-byte read would fetch whole.
SMALL_READ_BLOCK_BYTES = 64 << 10

SCHEMA = DOCUMENT_SCHEMA.append(pa.field("warc_record_id", pa.string())).append(
    pa.field("http_status", pa.int16())
).append(pa.field("warc_file", pa.string()))


CRAWL_ONLY = ("segments", "base_url", "format")  # options of the crawl listing, meaningless with explicit paths


class IngestConfig(SourceConfig):
    paths: list[str] | None = Field(
        None, min_length=1,
        description="WARC/WET files, globs or URLs (s3://, https://, file://, memory://); give paths or crawl, not both.",
    )
    crawl: str | None = Field(
        None, pattern=r"^CC-MAIN-\d{4}-\d{2}$",
        description="A Common Crawl id such as CC-MAIN-2024-10; its files are listed from base_url.",
    )
    segments: int | None = Field(None, ge=1, description="With crawl: read only the files of its first N segments.")
    base_url: str = Field(
        "https://data.commoncrawl.org/",
        description="With crawl: where crawl-data/ is served; a local mirror directory or file:// URL works too.",
    )
    format: Literal["warc", "wet"] = Field("warc", description="With crawl: list its WARC or its WET files.")
    reader: Literal["fastwarc", "warcio"] = Field("fastwarc", description="WARC parser; warcio is the slower fallback.")
    extractor: Extractor = Field("resiliparse", description="HTML-to-text library for WARC responses.")
    extract_timeout_s: float = Field(2.0, gt=0, description="Per-page extraction time limit; slower pages are rejected.")
    max_page_bytes: int = Field(16 << 20, ge=1, description="Pages of this many bytes or more are rejected unread.")
    network_timeout_s: float = Field(60.0, gt=0, description="Timeout for connecting to and each read of a remote file.")
    network_retries: int = Field(
        5, ge=0, description="Retries of a failed remote open or read, backing off exponentially from 1 s."
    )
    split_bytes: int | None = Field(
        DEFAULT_SPLIT_BYTES, ge=0, description="Read a WARC/WET file larger than this many bytes as several tasks, "
        "cut at records (a file gzipped as one member stays whole); 0 or null: one task per file.")

    @model_validator(mode="after")
    def one_input_kind(self) -> IngestConfig:
        if (self.paths is None) == (self.crawl is None):
            raise ValueError("give exactly one of paths and crawl")
        if self.crawl is None:
            self.refuse_unused(CRAWL_ONLY, "needs crawl, and paths are given")
        return self


class RemoteReadError(OSError):
    """A remote file still failed after every retry."""


def storage_options(url: str, timeout_s: float) -> dict:
    """Connect and read timeouts in the form each fsspec backend takes them."""
    protocol = url.split("://", 1)[0]
    if protocol in ("http", "https"):
        import aiohttp

        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(sock_connect=timeout_s, sock_read=timeout_s)}}
    if protocol in ("s3", "s3a"):
        return {"config_kwargs": {"connect_timeout": timeout_s, "read_timeout": timeout_s}}
    return {}


class RetryingFile:
    """A remote file read through fsspec; a failed open or read is retried with backoff, resuming at the same offset."""

    def __init__(self, url: str, timeout_s: float, retries: int, block_size: int | None = None):
        self.url, self.timeout_s, self.retries = url, timeout_s, retries
        self.open_options = storage_options(url, timeout_s) | ({"block_size": block_size} if block_size else {})
        self.position = 0
        self._file = None
        self._with_retries(lambda: None)

    def _with_retries(self, action):
        for attempt in range(self.retries + 1):
            try:
                if self._file is None:
                    self._file = fsspec.open(self.url, "rb", **self.open_options).open()
                    self._file.seek(self.position)
                return action()
            except PERMANENT_ERRORS:
                raise
            except Exception as error:  # noqa: BLE001 - backends raise their own types (aiohttp, botocore)
                if attempt == self.retries:
                    raise RemoteReadError(f"{self.url} at byte {self.position}: {error!r} after {attempt} retries") from error
                logger.warning("retrying %s at byte %d after %r", self.url, self.position, error)
                self.close()
                time.sleep(RETRY_BACKOFF_S * 2**attempt)

    def read(self, size: int = -1) -> bytes:
        data = self._with_retries(lambda: self._file.read(size))
        self.position += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self.position
        elif whence == 2:
            offset += self._with_retries(lambda: self._file.size)
        self._with_retries(lambda: self._file.seek(offset))
        self.position = offset
        return offset

    def tell(self) -> int:
        return self.position

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped anyway
                pass

    @property
    def closed(self) -> bool:
        return self._file is None

    def __enter__(self) -> RetryingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_url(path: str) -> bool:
    return "://" in path


def open_input(path: str, timeout_s: float, retries: int, block_size: int | None = None) -> BinaryIO:
    """A local file as it is; a URL through fsspec with timeouts and retries, read `block_size` bytes at a time
    (the filesystem's default if None)."""
    return RetryingFile(path, timeout_s, retries, block_size) if is_url(path) else open(path, "rb")


@dataclass(slots=True)
class RecordView:
    """What ingest needs from one WARC record, the same whichever library parsed it."""

    target_uri: str | None
    date: str | None
    payload_type: str | None  # WARC-Identified-Payload-Type
    content_type: str | None  # HTTP Content-Type, or the WARC one for records without HTTP
    http_status: int | None
    transfer_encoding: str | None
    content_encoding: str | None
    body: bytes


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def fastwarc_record(data: bytes) -> RecordView:
    """One framed response or conversion record parsed by fastwarc.

    WARC headers are looked up by fastwarc's enum keys and HTTP headers read in one call: a lookup
    by name costs 20-30 times more, and this runs for every document of the crawl.
    """
    from fastwarc.warc import ArchiveIterator, WarcHeader

    record = next(iter(ArchiveIterator(io.BytesIO(data), parse_http=True, quirks_mode=True, stream_detect=False)), None)
    if record is None:
        raise ValueError("fastwarc found no record in the framed bytes")
    headers = record.headers
    if record.is_http:
        http_headers = record.http_headers
        http = {name.lower(): value for name, value in http_headers.to_tuples()}
        status = http_headers.status_code
    else:
        http, status = {"content-type": headers.get(WarcHeader.CONTENT_TYPE)}, None
    return RecordView(
        target_uri=headers.get(WarcHeader.WARC_TARGET_URI),
        date=headers.get(WarcHeader.WARC_DATE),
        payload_type=headers.get(WarcHeader.WARC_IDENTIFIED_PAYLOAD_TYPE),
        content_type=http.get("content-type"),
        http_status=status,
        transfer_encoding=http.get("transfer-encoding"),
        content_encoding=http.get("content-encoding"),
        body=record.reader.read(),
    )


def warcio_record(data: bytes) -> RecordView:
    """The same record parsed by warcio, the slower fallback."""
    from warcio.archiveiterator import ArchiveIterator

    record = next(iter(ArchiveIterator(io.BytesIO(data))), None)
    if record is None:
        raise ValueError("warcio found no record in the framed bytes")
    headers = record.rec_headers
    http = record.http_headers if record.rec_type == "response" else None
    return RecordView(
        target_uri=headers.get_header("WARC-Target-URI"),
        date=headers.get_header("WARC-Date"),
        payload_type=headers.get_header("WARC-Identified-Payload-Type"),
        content_type=http.get_header("Content-Type") if http is not None else headers.get_header("Content-Type"),
        http_status=_int_or_none(http.get_statuscode()) if http is not None else None,
        transfer_encoding=http.get_header("Transfer-Encoding") if http is not None else None,
        content_encoding=http.get_header("Content-Encoding") if http is not None else None,
        body=record.raw_stream.read(),
    )


READERS = {"fastwarc": fastwarc_record, "warcio": warcio_record}


def dechunk(body: bytes) -> bytes:
    """Undo HTTP chunked transfer encoding; a body that is not really chunked comes back unchanged."""
    parts, position = [], 0
    while True:
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            return body
        try:
            size = int(body[position:line_end].split(b";", 1)[0], 16)
        except ValueError:
            return body
        if size == 0:
            return b"".join(parts)
        start = line_end + 2
        parts.append(body[start:start + size])
        position = start + size + 2
        if position > len(body):
            return b"".join(parts)


def http_payload(body: bytes, transfer_encoding: str | None, content_encoding: str | None, max_bytes: int) -> bytes:
    """The payload as the page was served, before transfer and content encodings; raw bytes if decoding fails.

    Common Crawl stores payloads already decoded, but other crawlers (wget, warcio) keep the encodings.
    """
    if transfer_encoding and "chunked" in transfer_encoding.lower():
        body = dechunk(body)
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("gzip", "x-gzip") and body.startswith(b"\x1f\x8b"):
        windows = (16 + zlib.MAX_WBITS,)
    elif encoding == "deflate":
        windows = (zlib.MAX_WBITS, -zlib.MAX_WBITS)  # zlib-wrapped as the RFC says, or raw as many servers send
    else:
        return body
    for window in windows:
        try:
            return zlib.decompressobj(window).decompress(body, max_bytes)
        except zlib.error:
            continue
    return body


def looks_like_html(body: bytes) -> bool:
    head = body[:SNIFF_BYTES].lstrip().lower()
    return head.startswith(b"<!doctype html") or b"<html" in head


def parse_warc_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def clean_url(uri: str | None) -> str | None:
    """The target URI without the angle brackets some crawlers (wget) put around it."""
    cleaned = uri.strip().strip("<>").strip() if uri else ""
    return cleaned or None


def domain_or_none(url: str | None) -> str | None:
    try:
        return domain_of(url)
    except ValueError:
        return None


def media_type(content_type: str | None) -> str | None:
    mime = content_type.split(";", 1)[0].strip().lower() if content_type else ""
    return mime or None


class DocumentBatch:
    """Columns of one batch: every document record becomes a row, with a reason when it is rejected."""

    def __init__(self) -> None:
        self.columns: dict[str, list] = {name: [] for name in SCHEMA.names}
        self.reasons: list[str | None] = []
        self.details: list[str | None] = []

    def __len__(self) -> int:
        return len(self.reasons)

    def add(self, row: dict, reason: str | None, detail: str | None) -> None:
        for name, values in self.columns.items():
            values.append(row.get(name))
        self.reasons.append(reason)
        self.details.append(detail)

    def result(self) -> BatchResult:
        table = pa.table(self.columns, schema=SCHEMA)
        return BatchResult.split(table, pa.array(self.reasons, pa.string()), pa.array(self.details, pa.string()))


@register
class Ingest(SourceStage):
    """Read Common Crawl WARC/WET files into documents: HTML responses are extracted, WET text is taken as is.

    Request, metadata, warcinfo, revisit and resource records are counted per file (`records:TYPE` in the
    shard record's stats) but are not documents, so they are neither kept nor rejected.
    """

    name = "ingest"
    Config = IngestConfig
    resources = Resources(cpus=1.0, memory_gb=1.0)

    def setup(self) -> None:
        self.extractor = HtmlExtractor(self.config.extractor, self.config.extract_timeout_s)

    def schema(self) -> pa.Schema:
        return SCHEMA

    def list_inputs(self) -> list[str]:
        """Each file, or its byte-range pieces where it is larger than `split_bytes`, in file order."""
        files = self._list_files()
        if not self.config.split_bytes:
            return files
        return plan_each(files, self._pieces)

    def _pieces(self, path: str) -> list[str]:
        """A file's pieces: byte ranges cut by its size alone, or the file itself where it is no larger than
        `split_bytes`, or gzipped as one member (no record's member found within a probe after the first cut)."""
        config = self.config
        pieces = split_by_bytes(path, config.split_bytes, storage_options(path, config.network_timeout_s))
        if len(pieces) < 2:
            return pieces
        first_cut = parse_source(pieces[0])[1].end
        try:
            with self._open_small(path) as stream:
                if not is_gzip(stream):
                    return pieces
                # The cheap test of a member start is enough here: taking a false one only costs empty tasks.
                found = find_in_range(stream, first_cut, first_cut + MEMBER_PROBE_BYTES, GZIP_MEMBER_START,
                                      lambda offset: may_start_member_record(read_at(stream, offset)))
        except (OSError, ValueError):
            return [path]  # its reader reports what is wrong with it
        return pieces if found is not None else [path]

    def _open_small(self, path: str) -> BinaryIO:
        """The file for a few small reads (a remote one fetched in small blocks)."""
        return open_input(path, self.config.network_timeout_s, self.config.network_retries, SMALL_READ_BLOCK_BYTES)

    def _list_files(self) -> list[str]:
        if self.config.crawl is None:
            return super().list_inputs()
        base = self.base_url()
        listing = f"{base}crawl-data/{self.config.crawl}/{self.config.format}.paths.gz"
        with open_input(listing, self.config.network_timeout_s, self.config.network_retries) as stream:
            keys = gzip.decompress(stream.read()).decode().split()
        if self.config.segments is not None:
            chosen: list[str] = []
            for key in keys:
                segment = key.split("/segments/", 1)[-1].split("/", 1)[0]
                if segment not in chosen and len(chosen) < self.config.segments:
                    chosen.append(segment)
            keys = [key for key in keys if key.split("/segments/", 1)[-1].split("/", 1)[0] in chosen]
        return [base + key for key in keys]

    def base_url(self) -> str:
        return self.config.base_url if self.config.base_url.endswith("/") else self.config.base_url + "/"

    def read(self, source: str) -> Iterator[BatchResult]:
        """One file's documents, or a piece's: the records whose start (gzip member, or header of a plain WARC)
        lies in its byte range, each read whole."""
        config = self.config
        path, piece = parse_source(source)
        if piece is not None and piece.kind != BYTES:
            raise ValueError(f"{source}: a WARC file cannot be read by {piece.kind}")
        warc_file = path.removeprefix(self.base_url()) if config.crawl else path
        crawl = config.crawl or (match.group(0) if (match := CRAWL_ID.search(path)) else None)
        source_name = crawl or PurePosixPath(path.split("://", 1)[-1]).name.split(".")[0]
        counts: Counter[str] = Counter()
        batch = DocumentBatch()
        started = time.perf_counter()
        try:
            stream = open_input(path, config.network_timeout_s, config.network_retries)
        except (OSError, ValueError) as error:
            failed_id = document_id(warc_file) if piece is None else document_id(warc_file, source.removeprefix(path))
            batch.add({"id": failed_id, "warc_file": warc_file, "source": source_name}, "read_failed",
                      f"cannot open: {error}"[:300])
            result = batch.result()
            result.stats = {INPUT_DOCUMENTS_STAT: 1}
            yield result
            return
        with stream:
            frames = WarcFrames(stream, config.max_page_bytes, piece.end if piece is not None else None)
            read_failures = 0
            items = self._owned_records(path, stream, frames, piece)
            while True:
                try:
                    item = next(items, None)
                except RemoteReadError as error:
                    item, read_failures = ReadProblem("read_failed", str(stream.tell()), str(error)[:300]), 1
                if item is None:
                    break
                if isinstance(item, ReadProblem):
                    counts[item.reason] += 1
                    row_id = document_id(item.record_id) if item.record_id else document_id(warc_file, item.location)
                    batch.add({"id": row_id, "warc_record_id": item.record_id, "warc_file": warc_file,
                               "source": source_name}, item.reason, item.detail)
                else:
                    counts[item.record_type] += 1
                    if item.damage is not None:
                        counts["bad_content_length"] += 1
                    if item.record_type in DOCUMENT_TYPES:
                        self._add_record(batch, item, warc_file, source_name)
                if len(batch) >= BATCH_ROWS:
                    yield batch.result()
                    batch = DocumentBatch()
                if read_failures:
                    break
        final = batch.result()
        # Every WARC record by type (and every problem by reason), into the shard record and manifest stats;
        # and the framing's own document count, which the runner checks the rows against.
        final.stats = {f"records:{kind}": count for kind, count in sorted(counts.items())}
        final.stats[INPUT_DOCUMENTS_STAT] = frames.documents + read_failures
        yield final
        logged = {"file": warc_file, "records": dict(sorted(counts.items())),
                  "seconds": round(time.perf_counter() - started, 3)}
        if piece is not None:
            logged["bytes"] = [piece.start, piece.end]
        logger.info("ingest %s", json.dumps(logged))

    def _owned_records(self, path: str, stream: BinaryIO, frames: WarcFrames,
                       piece: Piece | None) -> Iterator[Frame | ReadProblem]:
        """The whole file's records, or those a piece owns: from its first record to the next piece's."""
        start = 0 if piece is None else self._first_record(path, stream, piece)
        if start is None:
            return
        stream.seek(start)
        yield from frames.records_from(start)

    def _first_record(self, path: str, stream: BinaryIO, piece: Piece) -> int | None:
        """The offset of the piece's first record: the file's start for the first piece, else the first clean
        record start in its range (None if it holds none), by the test that ends the piece before it."""
        if piece.start == 0:
            return 0
        with self._open_small(path) as head:
            compressed = is_gzip(head)
        marker, skip = (GZIP_MEMBER_START, 0) if compressed else (LINE_RECORD_START, 1)
        max_bytes = self.config.max_page_bytes
        return find_in_range(stream, piece.start, piece.end, marker,
                             lambda offset: is_record_start(stream, offset, max_bytes), skip)

    def _add_record(self, batch: DocumentBatch, frame: Frame, warc_file: str, source: str) -> None:
        """One row for a framed response or conversion record: the document, or why it is rejected."""
        row = {"id": document_id(frame.record_id) if frame.record_id else document_id(warc_file, frame.location),
               "warc_record_id": frame.record_id, "source": source, "warc_file": warc_file}
        max_bytes = self.config.max_page_bytes
        if frame.damage is not None:
            batch.add(row, "bad_content_length", frame.damage)
            return
        if not frame.record_id:
            batch.add(row, "malformed_record", f"at byte {frame.location}: no WARC-Record-ID")
            return
        if frame.declared_length >= max_bytes:
            batch.add(row, "too_large", f"{frame.declared_length} bytes >= {max_bytes}")
            return
        try:
            record = READERS[self.config.reader](frame.data)
        except Exception as error:  # noqa: BLE001 - whatever the parser raises, this record is unreadable
            batch.add(row, "malformed_record", f"at byte {frame.location}: {type(error).__name__}: {error}"[:300])
            return
        url = clean_url(record.target_uri)
        row.update({
            "url": url,
            "domain": domain_or_none(url),
            "fetch_time": parse_warc_date(record.date),
            "http_status": record.http_status if record.http_status is not None and 0 <= record.http_status < 1000 else None,
        })
        text, reason, detail = self._text(record, frame.record_type == "conversion")
        row["text"] = text
        batch.add(row, reason, detail)

    def _text(self, record: RecordView, is_wet: bool) -> tuple[str | None, str | None, str | None]:
        """(text, None, None) for a document, else (None, reason, detail); checks run cheapest first."""
        max_bytes = self.config.max_page_bytes
        if not is_wet:
            if record.http_status != 200:
                return None, "http_status", str(record.http_status) if record.http_status is not None else "no status line"
            mime = media_type(record.payload_type) or media_type(record.content_type)
            if mime is None and not looks_like_html(record.body):
                return None, "not_html", "no content type and no HTML markup"
            if mime is not None and mime not in HTML_TYPES:
                return None, "not_html", mime
        body = http_payload(record.body, record.transfer_encoding, record.content_encoding, max_bytes)
        if len(body) >= max_bytes:
            return None, "too_large", f"over {max_bytes} bytes after content decoding"
        if not body.strip():
            return None, "no_text" if is_wet else "empty_body", None
        charset = charset_from_content_type(record.content_type)
        if body.startswith(BINARY_SIGNATURES):
            return None, "binary_payload", f"starts with {body[:8]!r}"
        wide_charset = any(width in (charset or "") for width in ("16", "32"))  # UTF-16/32 text has NUL bytes
        if b"\x00" in body[:SNIFF_BYTES] and not body.startswith(UNICODE_BOMS) and not wide_charset:
            return None, "binary_payload", "NUL bytes"
        html, codec = decode_html(body, charset or ("utf-8" if is_wet else None))
        if html is None:
            return None, "undecodable", f"over 1% of characters undecodable as {codec}"
        if is_wet:
            text = html.strip()
            return (text, None, None) if text else (None, "no_text", None)
        text, reason, detail = self.extractor.extract(html)
        if reason is not None:
            return None, reason, detail
        text = text.strip()
        return (text, None, None) if text else (None, "no_text", None)
