"""The Gristmill dataset: a directory of zstd Parquet shards, a reject ledger and a manifest.

Shards are committed atomically and never rewritten, so any reader (polars, pyarrow, duckdb,
Hugging Face `datasets`) sees only complete files, and a killed run resumes where it stopped.

Layout of a dataset directory::

    part-00000.parquet ...       documents (the data; readable as-is by any Parquet reader)
    _rejects/part-00000.parquet  the reject ledger: id, stage, reason, detail of every dropped row
    _shards/part-00000.json      per-shard record; its presence marks the shard complete
    _manifest.json               written when every shard is complete

`pyarrow.dataset.dataset(DIR)` reads the directory as plain documents (it skips names starting
with `_` or `.`); polars, duckdb and Hugging Face `datasets` read `DIR/*.parquet`. Writers use
hidden temporary names, so readers never see a half-written file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from pydantic import BaseModel, Field, ValidationError

SCHEMA_VERSION = 1
MANIFEST_NAME = "_manifest.json"
REJECTS_DIR = "_rejects"
SHARDS_DIR = "_shards"
TEMP_MARK = ".tmp-"

# Row groups of this many rows keep reads parallel and memory bounded.
ROW_GROUP_ROWS = 16_384
COMPRESSION = "zstd"
COMPRESSION_LEVEL = 3

REJECT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("stage", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
    ]
)


class DatasetError(Exception):
    """A dataset on disk is missing, incomplete or inconsistent; the message names the path."""


class ShardRecord(BaseModel):
    """What one completed shard holds and what it cost; written to `_shards/<name>.json`."""

    name: str
    source: str = Field(description="input shard or file this shard was made from")
    rows: int
    documents_out: int = Field(description="documents the rows hold; equals rows unless a stage splits documents")
    bytes: int
    checksum: str
    rows_in: int
    rejected: dict[str, int] = Field(default_factory=dict)
    text_bytes_in: int = 0
    text_bytes_out: int = 0
    seconds: float = 0.0
    stats: dict[str, int | float] = Field(default_factory=dict, description="stage-specific counters, summed")

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejected.values())


class Manifest(BaseModel):
    """Describes a complete dataset: who made it, from what, and every shard's checksum."""

    format: str = "gristmill.dataset"
    schema_version: int = SCHEMA_VERSION
    stage: str
    config: dict[str, Any]
    config_hash: str
    parents: list[str] = Field(default_factory=list)
    arrow_schema: str = Field(description="base64 of the Arrow IPC-serialised schema")
    columns: dict[str, str] = Field(description="column name -> Arrow type, for people")
    shards: list[ShardRecord]
    rows: int
    bytes: int
    rows_in: int
    rejected: dict[str, int]
    stats: dict[str, int | float] = Field(default_factory=dict)

    @property
    def schema(self) -> pa.Schema:
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(self.arrow_schema)))


def config_digest(stage: str, config: dict[str, Any], parents: Iterable[str] = ()) -> str:
    """A stable hash of what defines a dataset's content: stage, config and parents' hashes."""
    canonical = json.dumps(
        {"stage": stage, "config": config, "parents": list(parents)}, sort_keys=True, default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def file_checksum(path: Path) -> str:
    digest = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return "xxh3_128:" + digest.hexdigest()


def write_json_atomic(path: Path, payload: str) -> None:
    temporary = path.with_name(f".{path.name}{TEMP_MARK}{uuid.uuid4().hex}")
    temporary.write_text(payload)
    os.replace(temporary, path)


class ParquetShardWriter:
    """Streams batches into one Parquet shard under a temporary name; `commit` renames it into place.

    Batches are buffered up to `row_group_rows` so small batches still make well-sized row
    groups; memory stays bounded by one row group.
    """

    def __init__(self, path: Path, schema: pa.Schema, row_group_rows: int = ROW_GROUP_ROWS):
        self.path = path
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.rows = 0
        self._temporary = path.with_name(f".{path.name}{TEMP_MARK}{uuid.uuid4().hex}")
        self._buffer: list[pa.RecordBatch] = []
        self._buffered_rows = 0
        self._writer = pq.ParquetWriter(
            self._temporary,
            schema,
            compression=COMPRESSION,
            compression_level=COMPRESSION_LEVEL,
        )

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        if data.num_rows == 0:
            return
        if data.schema != self.schema:
            data = data.select(self.schema.names).cast(self.schema)
        batches = data.to_batches() if isinstance(data, pa.Table) else [data]
        self._buffer.extend(batches)
        self._buffered_rows += data.num_rows
        self.rows += data.num_rows
        if self._buffered_rows >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            table = pa.Table.from_batches(self._buffer, schema=self.schema)
            self._writer.write_table(table, row_group_size=self.row_group_rows)
            self._buffer, self._buffered_rows = [], 0

    def commit(self) -> tuple[int, str]:
        """Close, rename into place and return (file bytes, checksum)."""
        self._flush()
        self._writer.close()
        os.replace(self._temporary, self.path)
        return self.path.stat().st_size, file_checksum(self.path)

    def abort(self) -> None:
        self._writer.close()
        self._temporary.unlink(missing_ok=True)


def iter_parquet_batches(
    path: str | Path, columns: list[str] | None = None, batch_rows: int = ROW_GROUP_ROWS
) -> Iterator[pa.RecordBatch]:
    """Stream a Parquet file batch by batch, holding one row group at a time."""
    with pq.ParquetFile(path) as parquet:
        yield from parquet.iter_batches(batch_size=batch_rows, columns=columns)


class Dataset:
    """A dataset directory, complete (with a manifest) or in progress (shard records only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME

    @property
    def is_complete(self) -> bool:
        return self.manifest_path.exists()

    def shard_path(self, name: str) -> Path:
        return self.path / f"{name}.parquet"

    def reject_path(self, name: str) -> Path:
        return self.path / REJECTS_DIR / f"{name}.parquet"

    def record_path(self, name: str) -> Path:
        return self.path / SHARDS_DIR / f"{name}.json"

    def prepare(self) -> None:
        (self.path / REJECTS_DIR).mkdir(parents=True, exist_ok=True)
        (self.path / SHARDS_DIR).mkdir(parents=True, exist_ok=True)

    def manifest(self) -> Manifest:
        if not self.manifest_path.exists():
            raise DatasetError(f"{self.path}: not a complete Gristmill dataset (no {MANIFEST_NAME})")
        try:
            return Manifest.model_validate_json(self.manifest_path.read_text())
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise DatasetError(f"{self.manifest_path}: unreadable manifest: {where}: {first['msg']}") from None

    def completed_record(self, name: str) -> ShardRecord | None:
        path = self.record_path(name)
        if not path.exists():
            return None
        return ShardRecord.model_validate_json(path.read_text())

    def shard_records(self) -> list[ShardRecord]:
        directory = self.path / SHARDS_DIR
        if not directory.exists():
            return []
        return [
            ShardRecord.model_validate_json(path.read_text())
            for path in sorted(directory.glob("*.json"))
        ]

    def shard_files(self) -> list[Path]:
        """Data shards in order; from the manifest when complete, else whatever is committed."""
        if self.is_complete:
            return [self.shard_path(record.name) for record in self.manifest().shards]
        return [self.shard_path(record.name) for record in self.shard_records()]

    def schema(self) -> pa.Schema:
        if self.is_complete:
            return self.manifest().schema
        files = self.shard_files()
        if not files:
            raise DatasetError(f"{self.path}: no committed shards")
        return pq.read_schema(files[0])

    def iter_batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        for path in self.shard_files():
            yield from iter_parquet_batches(path, columns=columns)

    def iter_rejects(self) -> Iterator[pa.RecordBatch]:
        names = [record.name for record in self.manifest().shards]
        for name in names:
            yield from iter_parquet_batches(self.reject_path(name))

    def remove_temporaries(self) -> None:
        """Delete files left by writers that died before committing, work files included."""
        for leftover in self.path.rglob(f".*{TEMP_MARK}*"):
            if leftover.is_file():
                leftover.unlink(missing_ok=True)

    def finalize(
        self,
        stage: str,
        config: dict[str, Any],
        config_hash: str,
        parents: list[str],
        records: list[ShardRecord],
        schema: pa.Schema,
    ) -> Manifest:
        """Verify every shard against its record and write the manifest, marking the dataset complete."""
        for record in records:
            path = self.shard_path(record.name)
            if not path.exists() or path.stat().st_size != record.bytes:
                raise DatasetError(f"{path}: missing or does not match its shard record")
        rejected: Counter[str] = Counter()
        stats: Counter[str] = Counter()
        for record in records:
            rejected.update(record.rejected)
            stats.update(record.stats)
        manifest = Manifest(
            stage=stage,
            config=config,
            config_hash=config_hash,
            parents=parents,
            arrow_schema=base64.b64encode(schema.serialize().to_pybytes()).decode(),
            columns={field.name: str(field.type) for field in schema},
            shards=records,
            rows=sum(record.rows for record in records),
            bytes=sum(record.bytes for record in records),
            rows_in=sum(record.rows_in for record in records),
            rejected=dict(sorted(rejected.items())),
            stats=dict(sorted(stats.items())),
        )
        self.remove_temporaries()
        write_json_atomic(self.manifest_path, manifest.model_dump_json(indent=2))
        return manifest
