"""`read_text`: turn JSONL or Parquet files of text into Gristmill documents, one shard per file.

Malformed lines, missing text and unparseable fields are rejected with a reason and their
line number, so a corpus with a few broken records still loads and nothing vanishes.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from pydantic import Field

from pipeline.documents import DOCUMENT_SCHEMA
from pipeline.stage import BatchResult, SourceConfig, SourceStage, empty_rejects, register, reject_rows

BATCH_ROWS = 8_192


class ReadTextConfig(SourceConfig):
    format: Literal["auto", "jsonl", "parquet"] = Field("auto", description="Input format; auto decides by extension.")
    text_field: str = Field("text", description="Field holding the text.")
    id_field: str = Field("id", description="Field holding a stable id; FILE/LINE is used where it is absent.")
    source: str | None = Field(None, description="Source name; default: each row's `source`, else the file's stem.")


def open_text(path: str) -> io.TextIOBase:
    """Open plain, gzip or zstd JSONL as text, decided by the file name."""
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    if path.endswith(".zst"):
        raw = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
        return io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


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


@register
class ReadText(SourceStage):
    """Read JSONL (plain, .gz, .zst) or Parquet files with a text column into documents."""

    name = "read_text"
    Config = ReadTextConfig

    def schema(self) -> pa.Schema:
        return DOCUMENT_SCHEMA

    def read(self, path: str) -> Iterator[BatchResult]:
        kind = self.config.format
        if kind == "auto":
            kind = "parquet" if path.endswith(".parquet") else "jsonl"
        records = self._parquet_records(path) if kind == "parquet" else self._jsonl_records(path)
        stem = Path(path).name.split(".")[0]
        rows: list[dict[str, Any]] = []
        rejects: dict[str, list] = {}
        for position, record in records:
            fallback_id = f"{stem}/{position}"
            if isinstance(record, Exception):
                rejects.setdefault("malformed_json", []).append((fallback_id, f"line {position}: {record}"))
                continue
            document, problem = self._document(record, fallback_id, stem)
            if problem:
                reason, detail = problem
                rejects.setdefault(reason, []).append((document_id_or(record, self.config.id_field, fallback_id), detail))
            else:
                rows.append(document)
            if len(rows) >= BATCH_ROWS:
                yield self._batch(rows, rejects)
                rows, rejects = [], {}
        if rows or rejects:
            yield self._batch(rows, rejects)

    def _batch(self, rows: list[dict[str, Any]], rejects: dict[str, list]) -> BatchResult:
        kept = pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA)
        ledgers = [
            reject_rows([item[0] for item in items], reason, [item[1] for item in items])
            for reason, items in sorted(rejects.items())
        ]
        return BatchResult(kept, pa.concat_tables(ledgers) if ledgers else empty_rejects())

    def _document(
        self, record: dict[str, Any], fallback_id: str, stem: str
    ) -> tuple[dict[str, Any], tuple[str, str] | None]:
        if not isinstance(record, dict):
            return {}, ("malformed_record", f"expected an object, got {type(record).__name__}")
        text = record.get(self.config.text_field)
        if not isinstance(text, str) or not text:
            return {}, ("missing_text", f"field {self.config.text_field!r} is missing, empty or not a string")
        try:
            fetch_time = parse_time(record.get("fetch_time"))
            lang_score = record.get("lang_score")
            lang_score = None if lang_score is None else float(lang_score)
        except (TypeError, ValueError, OverflowError) as error:
            return {}, ("bad_field", str(error))
        url = record.get("url")
        return {
            "id": str(document_id_or(record, self.config.id_field, fallback_id)),
            "text": text,
            "url": url if isinstance(url, str) else None,
            "domain": record.get("domain") or domain_of(url if isinstance(url, str) else None),
            "source": self.config.source or record.get("source") or stem,
            "fetch_time": fetch_time,
            "lang": record.get("lang"),
            "lang_score": lang_score,
        }, None

    def _jsonl_records(self, path: str) -> Iterator[tuple[int, Any]]:
        with open_text(path) as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    yield number, error

    def _parquet_records(self, path: str) -> Iterator[tuple[int, Any]]:
        position = 0
        with pq.ParquetFile(path) as parquet:
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
                for record in batch.to_pylist():
                    position += 1
                    yield position, record


def document_id_or(record: Any, field: str, fallback: str) -> str:
    value = record.get(field) if isinstance(record, dict) else None
    return str(value) if value not in (None, "") else fallback
