"""`read_text`: turn JSONL or Parquet files of text into Gristmill documents, one shard per file or piece.

Every non-blank line (or Parquet row) becomes a document or a ledger row with a reason, and a
compressed file that breaks off keeps every line before the damage, so one bad record never costs a file.
A file larger than `split_bytes` is read as several tasks (Parquet by row groups, plain JSONL by lines),
so one huge file neither runs alone nor loses all its work to a kill.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from pydantic import Field

from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA
from gristmill.pipeline.engine.input_splits import (
    BYTES,
    ROW_GROUPS,
    Piece,
    is_url,
    open_file,
    open_line_range,
    parse_source,
    split_by_bytes,
    split_parquet,
)
from gristmill.pipeline.engine.stage import (
    INPUT_DOCUMENTS_STAT,
    BatchResult,
    SourceConfig,
    SourceStage,
    empty_rejects,
    register,
    reject_rows,
)

BATCH_ROWS = 8_192
CHUNK_BYTES = 1 << 16
INVALID_UTF8_STAT = "invalid_utf8_lines"
# What a decompressor raises on input that is cut short or corrupt (gzip: EOFError, BadGzipFile, zlib.error).
DAMAGED_STREAM_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError, zstandard.ZstdError)
OPTIONAL_STRING_FIELDS = ("url", "domain", "source", "lang")
STRING_OR_NULL = (str, type(None))
UTF8_BOM = b"\xef\xbb\xbf"
# Compressed JSONL has no byte offsets to cut at (a decompressor must start at the beginning), so it stays whole.
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
REMOTE_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}
DEFAULT_SPLIT_BYTES = 1 << 30


class ReadTextConfig(SourceConfig):
    format: Literal["auto", "jsonl", "parquet"] = Field("auto", description="Input format; auto decides by extension.")
    text_field: str = Field("text", description="Field holding the text.")
    id_field: str = Field("id", description="Field holding a stable id; FILE/LINE is used where it is absent.")
    source: str | None = Field(None, description="Source name; default: each row's `source`, else the file's stem.")
    on_invalid_utf8: Literal["reject", "replace"] = Field(
        "reject", description="A JSONL line that is not valid UTF-8: reject it, or keep it with U+FFFD in place of "
        "the bad bytes; counted either way.")
    split_bytes: int | None = Field(
        DEFAULT_SPLIT_BYTES, ge=0, description="Read an input larger than this many bytes as several tasks: "
        "Parquet by row groups, uncompressed JSONL by lines (compressed JSONL stays whole); 0 or null: one task "
        "per file.")


@dataclass(frozen=True)
class Problem:
    """Why a line or row did not become a document: the ledger reason and its detail."""

    reason: str
    detail: str


class ZstdFrames(io.RawIOBase):
    """Decompress a zstd stream of one or more frames; unlike zstandard's `stream_reader`, a frame cut short
    raises EOFError instead of ending quietly."""

    def __init__(self, compressed: BinaryIO):
        self._compressed = compressed
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame = self._decompressor.decompressobj()
        self._inside_frame = False
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = self._compressed.read(CHUNK_BYTES)
            if not chunk:
                if self._inside_frame:
                    raise EOFError("zstd input ended inside a frame")
                return 0
            self._pending = memoryview(self._decompress(chunk))
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def _decompress(self, chunk: bytes) -> bytes:
        output = []
        while chunk:
            output.append(self._frame.decompress(chunk))
            self._inside_frame = not self._frame.eof
            if not self._frame.eof:
                break
            chunk = self._frame.unused_data
            self._frame = self._decompressor.decompressobj()
        return b"".join(output)

    def close(self) -> None:
        self._compressed.close()
        super().close()


def open_bytes(path: str) -> BinaryIO:
    """Open plain, gzip, bzip2, xz or zstd input as bytes, decided by the file name; damage raises on read."""
    if is_url(path):
        return open_remote_bytes(path)
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".bz2"):
        return bz2.open(path, "rb")
    if path.endswith(".xz"):
        return lzma.open(path, "rb")
    if path.endswith(".zst"):
        return io.BufferedReader(ZstdFrames(open(path, "rb")), CHUNK_BYTES)
    return open(path, "rb")


def open_remote_bytes(url: str) -> BinaryIO:
    """A URL's bytes through fsspec, decompressed as `open_bytes` does for a local file."""
    if url.endswith(".zst"):
        return io.BufferedReader(ZstdFrames(open_file(url)), CHUNK_BYTES)
    import fsspec

    compression = next((name for suffix, name in REMOTE_COMPRESSION.items() if url.endswith(suffix)), None)
    stream = fsspec.open(url, "rb", compression=compression).open()
    # An object store's file object (s3fs, gcsfs) has no read1, which a text wrapper needs; a buffer gives it.
    return stream if compression else io.BufferedReader(stream, CHUNK_BYTES)


def open_text(path: str) -> io.TextIOBase:
    """Open plain or compressed JSONL as text (bad bytes replaced), for readers that need no per-line accounting."""
    return io.TextIOWrapper(open_bytes(path), encoding="utf-8", errors="replace")


def split_lines(stream: BinaryIO, counts: Counter, lines_before: int = 0) -> Iterator[tuple[int, bytes | Problem]]:
    """The non-blank lines of a byte stream with their 1-based numbers (counting on from `lines_before`, for a
    piece of a file), counted into `counts` on the raw bytes before any is parsed (the independent count).
    A stream that breaks off ends with one `truncated_input` problem standing for the cut line and the rest."""
    number, bytes_read, partial = lines_before, 0, []
    while True:
        try:
            chunk = stream.read1(CHUNK_BYTES)
        except DAMAGED_STREAM_ERRORS as error:
            counts[INPUT_DOCUMENTS_STAT] += 1
            offset = bytes_read - sum(map(len, partial))
            yield number + 1, Problem("truncated_input", f"the rest of the file is unreadable from decompressed byte "
                                      f"{offset:,}: {type(error).__name__}: {error}")
            return
        if not chunk:
            break
        bytes_read += len(chunk)
        if b"\n" not in chunk:
            partial.append(chunk)
            continue
        lines = chunk.split(b"\n")
        lines[0] = b"".join([*partial, lines[0]])
        partial = [lines.pop()]
        non_blank = [(number + index, line) for index, line in enumerate(lines, 1) if line and not line.isspace()]
        number += len(lines)
        counts[INPUT_DOCUMENTS_STAT] += len(non_blank)
        yield from non_blank
    last = b"".join(partial)
    if last and not last.isspace():
        counts[INPUT_DOCUMENTS_STAT] += 1
        yield number + 1, last


def parse_json_line(line: bytes, on_invalid_utf8: str, counts: Counter) -> Any:
    """One JSONL line as a Python value, or the Problem that stops it: bad UTF-8, bad JSON, nesting too deep."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        counts[INVALID_UTF8_STAT] += 1
        if on_invalid_utf8 == "reject":
            return Problem("invalid_utf8", str(error))
        text = line.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except RecursionError:
        return Problem("too_deep", "nested deeper than the JSON parser allows")
    except ValueError as error:  # JSONDecodeError, and integers too long to convert
        return Problem("malformed_json", str(error))


def parse_time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def domain_of(url: str | None) -> str | None:
    if not url:
        return None
    host = urlsplit(url).hostname
    return host.removeprefix("www.") if host else None


def is_text(value: str) -> bool:
    """False for a string holding a lone surrogate (JSON `"\\ud800"`), which UTF-8 and Arrow cannot store."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class PendingBatch:
    """Documents and ledger rows gathered for one BatchResult, with each document's position for its ledger row."""

    def __init__(self, stem: str, unit: str):
        self.stem, self.unit = stem, unit
        self.rows: list[dict[str, Any]] = []
        self.positions: list[int] = []
        self.rejects: dict[str, list[tuple[str, str]]] = {}
        self.size = 0

    def keep(self, document: dict[str, Any], position: int) -> None:
        self.rows.append(document)
        self.positions.append(position)
        self.size += 1

    def reject(self, problem: Problem, ledger_id: str, position: int) -> None:
        self.rejects.setdefault(problem.reason, []).append((ledger_id, f"{self.unit} {position}: {problem.detail}"))
        self.size += 1

    def result(self, counts: Counter) -> BatchResult:
        """The batch's documents and ledger, with the input counts gathered since the last batch."""
        try:
            kept = pa.Table.from_pylist(self.rows, schema=DOCUMENT_SCHEMA)
        except UnicodeEncodeError:
            kept = pa.Table.from_pylist(self._without_lone_surrogates(), schema=DOCUMENT_SCHEMA)
        ledgers = [
            reject_rows([item[0] for item in items], reason, [item[1] for item in items])
            for reason, items in sorted(self.rejects.items())
        ]
        stats = dict(counts)
        counts.clear()
        return BatchResult(kept, pa.concat_tables(ledgers) if ledgers else empty_rejects(), stats)

    def _without_lone_surrogates(self) -> list[dict[str, Any]]:
        """The rows Arrow can store. A lone surrogate escape (JSON `"\\ud800"`) parses into a string that UTF-8
        cannot hold; Arrow's own encoding finds it, so the rare batch holding one pays for the search, not every line."""
        clean = []
        for document, position in zip(self.rows, self.positions):
            field = next((name for name, value in document.items() if isinstance(value, str) and not is_text(value)), None)
            if field is None:
                clean.append(document)
                continue
            ledger_id = document["id"] if is_text(document["id"]) else f"{self.stem}/{position}"
            problem = Problem("bad_escape", f"field {field!r} holds a lone surrogate escape, which is not text")
            self.reject(problem, ledger_id, position)
        return clean


def is_identifier(value: Any) -> bool:
    """Whether a record's id can name it in the ledger: a non-empty string UTF-8 can hold, or an integer."""
    return (isinstance(value, str) and value != "" and is_text(value)) or (
        isinstance(value, int) and not isinstance(value, bool))


@register
class ReadText(SourceStage):
    """Read JSONL (plain, .gz, .bz2, .xz, .zst) or Parquet files with a text column into documents."""

    name = "read_text"
    Config = ReadTextConfig

    def schema(self) -> pa.Schema:
        return DOCUMENT_SCHEMA

    def input_format(self, path: str) -> str:
        if self.config.format != "auto":
            return self.config.format
        return "parquet" if path.endswith(".parquet") else "jsonl"

    def list_inputs(self) -> list[str]:
        """Each file, or its pieces where it is larger than `split_bytes`; pieces follow their file's order."""
        files = super().list_inputs()
        target = self.config.split_bytes
        if not target:
            return files
        pieces = []
        for path in files:
            if self.input_format(path) == "parquet":
                pieces.extend(split_parquet(path, target))
            elif path.endswith(COMPRESSED_SUFFIXES):
                pieces.append(path)
            else:
                pieces.extend(split_by_bytes(path, target))
        return pieces

    def read(self, source: str) -> Iterator[BatchResult]:
        path, piece = parse_source(source)
        kind = self.input_format(path)
        splittable = kind == "parquet" or not path.endswith(COMPRESSED_SUFFIXES)
        if piece is not None and (piece.kind != (ROW_GROUPS if kind == "parquet" else BYTES) or not splittable):
            raise ValueError(f"{source}: a {kind} file {path} cannot be read by {piece.kind}")
        counts: Counter = Counter()
        if kind == "parquet":
            records = self._parquet_records(path, counts, piece)
        else:
            records = self._jsonl_records(path, counts, piece)
        unit = "row" if kind == "parquet" else "line"
        stem = Path(path).name.split(".")[0]
        batch = PendingBatch(stem, unit)
        for position, record in records:
            fallback_id = f"{stem}/{position}"
            document = record if isinstance(record, Problem) else self._document(record, fallback_id, stem)
            if isinstance(document, Problem):
                batch.reject(document, self._ledger_id(record, fallback_id), position)
            else:
                batch.keep(document, position)
            if batch.size >= BATCH_ROWS:
                yield batch.result(counts)
                batch = PendingBatch(stem, unit)
        if batch.size or counts:
            yield batch.result(counts)

    def _ledger_id(self, record: Any, fallback_id: str) -> str:
        """The record's own id when it has a usable one, else FILE/LINE."""
        value = record.get(self.config.id_field) if isinstance(record, dict) else None
        return str(value) if is_identifier(value) else fallback_id

    def _document(self, record: Any, fallback_id: str, stem: str) -> dict[str, Any] | Problem:
        """The document a record makes, or the Problem with its first bad field."""
        if not isinstance(record, dict):
            return Problem("malformed_record", f"expected an object, got {type(record).__name__}")
        text_field, id_field = self.config.text_field, self.config.id_field
        text = record.get(text_field)
        if not isinstance(text, str) or not text:
            return Problem("missing_text", f"field {text_field!r} is missing, empty or not a string")
        identifier = record.get(id_field)
        if identifier is None or identifier == "":
            identifier = fallback_id
        elif not isinstance(identifier, (str, int)) or isinstance(identifier, bool):
            return Problem("bad_field", f"field {id_field!r} is {type(identifier).__name__}, expected a string or integer")
        url, domain, source, lang = strings = [record.get(name) for name in OPTIONAL_STRING_FIELDS]
        for name, value in zip(OPTIONAL_STRING_FIELDS, strings):
            if not isinstance(value, STRING_OR_NULL):
                return Problem("bad_field", f"field {name!r} is {type(value).__name__}, expected a string")
        try:
            fetch_time = parse_time(record.get("fetch_time"))
        except (TypeError, ValueError, OverflowError, OSError) as error:
            return Problem("bad_field", f"field 'fetch_time': {error}")
        try:
            lang_score = record.get("lang_score")
            lang_score = None if lang_score is None else float(lang_score)
        except (TypeError, ValueError, OverflowError) as error:
            return Problem("bad_field", f"field 'lang_score': {error}")
        return {
            "id": str(identifier),
            "text": text,
            "url": url,
            "domain": domain or domain_of(url),
            "source": self.config.source or source or stem,
            "fetch_time": fetch_time,
            "lang": lang,
            "lang_score": lang_score,
        }

    def _jsonl_records(self, path: str, counts: Counter, piece: Piece | None) -> Iterator[tuple[int, Any]]:
        """Lines as parsed values with their line numbers in the whole file, also for a piece of it."""
        stream, lines_before = open_line_range(path, piece) if piece is not None else (open_bytes(path), 0)
        with stream:
            for number, line in split_lines(stream, counts, lines_before):
                if isinstance(line, Problem):
                    yield number, line
                    continue
                if number == 1:
                    line = line.removeprefix(UTF8_BOM)
                yield number, parse_json_line(line, self.config.on_invalid_utf8, counts)

    def _parquet_records(self, path: str, counts: Counter, piece: Piece | None) -> Iterator[tuple[int, Any]]:
        """Rows as dicts, counted from the file's metadata; a row group that cannot be decoded rejects its rows.
        A piece reads its row groups and numbers rows as in the whole file."""
        with ExitStack() as closing:
            try:
                parquet = pq.ParquetFile(closing.enter_context(open_file(path)) if is_url(path) else path)
            except pa.ArrowInvalid as error:
                counts[INPUT_DOCUMENTS_STAT] += 1
                yield 1, Problem("truncated_input", f"unreadable Parquet file: {error}")
                return
            closing.enter_context(parquet)
            metadata = parquet.metadata
            groups = range(metadata.num_row_groups) if piece is None else range(piece.start, piece.end)
            if groups.stop > metadata.num_row_groups:
                raise ValueError(f"{path} has {metadata.num_row_groups} row groups, not the {groups.stop} planned; "
                                 "was it replaced during the run?")
            group_rows = [metadata.row_group(group).num_rows for group in range(groups.stop)]
            counts[INPUT_DOCUMENTS_STAT] += sum(group_rows[groups.start:])
            used = {self.config.text_field, self.config.id_field, "fetch_time", "lang_score", *OPTIONAL_STRING_FIELDS}
            columns = [name for name in parquet.schema_arrow.names if name in used]
            position = sum(group_rows[: groups.start])
            for group in groups:
                group_end = position + parquet.metadata.row_group(group).num_rows
                try:
                    for batch in parquet.iter_batches(BATCH_ROWS, row_groups=[group], columns=columns):
                        for record in batch.to_pylist():
                            position += 1
                            yield position, record
                except (OSError, pa.ArrowException) as error:
                    problem = Problem("unreadable_row_group", f"row group {group}: {error}")
                    while position < group_end:
                        position += 1
                        yield position, problem
