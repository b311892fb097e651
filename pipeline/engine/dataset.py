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

A dataset may also live at an fsspec URL (s3://, gs://, abfs://, memory://). Object stores have no
rename, so there a shard commits by uploading its data and ledger under their final names and then its
shard record, the commit marker: readers and resume trust only shard records, a file left by a killed
task is overwritten when the task reruns, and the manifest comes last. The bytes are the same as on disk.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

# Writers elsewhere import these from here too, as they did before the helpers moved to files.py.
from gristmill.pipeline.engine.files import (
    TEMP_MARK,
    TEMPORARY_NAME,
    Location,
    as_location,
    is_remote,
    spool_path,
    temporary_name,
    upload,
    write_json_atomic,
)
from pydantic import BaseModel, Field, ValidationError

SCHEMA_VERSION = 1
BaseModelType = TypeVar("BaseModelType", bound=BaseModel)
MANIFEST_NAME = "_manifest.json"
REJECTS_DIR = "_rejects"
SHARDS_DIR = "_shards"
WORK_DIR = "_work"

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
    ledger_bytes: int | None = Field(None, description="size of the reject ledger file; None in older datasets")
    ledger_checksum: str | None = Field(None, description="xxh3-128 of the reject ledger file; None in older datasets")

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
    checksum: str | None = Field(None, description="xxh3-128 of this manifest written without this field")

    @property
    def schema(self) -> pa.Schema:
        return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(self.arrow_schema)))


def config_digest(stage: str, config: dict[str, Any], parents: Iterable[str] = ()) -> str:
    """A stable hash of what defines a dataset's content: stage, config and parents' hashes."""
    canonical = json.dumps(
        {"stage": stage, "config": config, "parents": list(parents)}, sort_keys=True, default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def file_checksum(path: Location) -> str:
    digest = xxhash.xxh3_128()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return "xxh3_128:" + digest.hexdigest()


def manifest_checksum(manifest: Manifest) -> str:
    """Covers what no other file repeats (config, parents, schema), so a changed value cannot pass as intact."""
    return "xxh3_128:" + xxhash.xxh3_128_hexdigest(manifest.model_dump_json(indent=2, exclude={"checksum"}).encode())


def check_file(path: Location, size: int, checksum: str | None = None, named: Location | None = None) -> None:
    """Raise a one-line DatasetError unless `path` has the recorded size and (when given) checksum. The error names
    `named` where `path` is a local copy of it.

    The size is checked first: a truncated or replaced file costs a stat, a flipped bit one xxh3 pass.
    """
    shown = named or path
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise DatasetError(f"{shown}: missing (its shard record lists it)") from None
    if actual != size:
        raise DatasetError(f"{shown}: {actual:,} bytes, its shard record says {size:,} (truncated or replaced)")
    if checksum is not None and file_checksum(path) != checksum:
        raise DatasetError(f"{shown}: checksum differs from its shard record (damaged)")


def read_model(path: Location, model: type[BaseModelType]) -> BaseModelType:
    """A shard record or manifest, refused unless the file is byte for byte what Gristmill wrote for its values."""
    try:
        return parse_model(path, path.read_bytes(), model)
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing") from None


def parse_model(path: Location, content: bytes, model: type[BaseModelType]) -> BaseModelType:
    """Re-serialising and comparing catches what parsing forgives: a changed space, a renamed key, `1e5` as `1E5`.
    Gristmill writes indented JSON; compact JSON (what `model_dump_json()` gives) is accepted too."""
    try:
        text = content.decode()
        parsed = model.model_validate_json(text)
    except (UnicodeDecodeError, ValidationError) as error:
        detail = ""
        if isinstance(error, ValidationError):
            first = error.errors()[0]
            detail = ": " + ".".join(str(part) for part in first["loc"]) + f": {first['msg']}"
        raise DatasetError(f"{path}: unreadable (damaged){detail}") from None
    if text not in (parsed.model_dump_json(indent=2, exclude_unset=True), parsed.model_dump_json(exclude_unset=True)):
        raise DatasetError(f"{path}: not as Gristmill wrote it (damaged or edited)")
    return parsed


@functools.lru_cache(maxsize=16)
def _parse_manifest(path: Location, content: bytes) -> Manifest:
    """One parse per content of a manifest and process: every task of a node reads its input's manifest.

    Keyed by the bytes, not a stat: a flipped bit changes neither size nor modification time.
    """
    manifest = parse_model(path, content, Manifest)
    if manifest.checksum is not None and manifest.checksum != manifest_checksum(manifest):
        raise DatasetError(f"{path}: checksum differs from its contents (damaged)")
    return manifest


class ParquetShardWriter:
    """Streams batches into one Parquet shard under a temporary name; `commit` renames it into place, or on an
    object store uploads it under its final name.

    Batches are buffered up to `row_group_rows` so small batches still make well-sized row
    groups; memory stays bounded by one row group.
    """

    def __init__(self, path: Location, schema: pa.Schema, row_group_rows: int = ROW_GROUP_ROWS):
        self.path = path
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.rows = 0
        self._temporary = spool_path(path) if is_remote(path) else temporary_name(path)
        self._buffer: list[pa.RecordBatch] = []
        self._buffered_rows = 0
        self._writer = pq.ParquetWriter(
            self._temporary,
            schema,
            compression=COMPRESSION,
            compression_level=COMPRESSION_LEVEL,
        )

    def _named(self, error: OSError) -> OSError:
        """pyarrow's I/O errors carry no file name; give the shard's, with the errno when one is known."""
        self.abort()
        errno = error.errno if error.errno is not None else _errno_in(str(error))
        strerror = os.strerror(errno) if errno else (error.strerror or str(error))
        return OSError(errno, strerror, str(self.path))

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        try:
            self._write(data)
        except OSError as error:
            raise self._named(error) from None

    def _write(self, data: pa.RecordBatch | pa.Table) -> None:
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
        """Close, put into place and return (file bytes, checksum), both taken from the local file."""
        try:
            self._flush()
            self._writer.close()
            size, checksum = self._temporary.stat().st_size, file_checksum(self._temporary)
            if is_remote(self.path):
                upload(self._temporary, self.path)
                self._temporary.unlink()
            else:
                os.replace(self._temporary, self.path)
        except OSError as error:
            raise self._named(error) from None
        return size, checksum

    def abort(self) -> None:
        try:
            self._writer.close()
        except OSError:  # closing flushes; on a full disk that fails too, and the file goes anyway
            pass
        self._temporary.unlink(missing_ok=True)


def _errno_in(message: str) -> int | None:
    """The errno pyarrow writes into its messages ('[errno 28] No space left on device')."""
    match = re.search(r"\[errno (\d+)\]", message, re.IGNORECASE)
    return int(match.group(1)) if match else None


@contextlib.contextmanager
def open_parquet(path: str | Location) -> Iterator[pq.ParquetFile]:
    """A Parquet file on disk or at an fsspec URL (read in ranges, never downloaded whole)."""
    location = as_location(path)
    if not is_remote(location):
        with pq.ParquetFile(location) as parquet:
            yield parquet
        return
    with location.open("rb") as handle, pq.ParquetFile(handle) as parquet:
        yield parquet


def read_parquet_schema(path: str | Location) -> pa.Schema:
    with open_parquet(path) as parquet:
        return parquet.schema_arrow


def read_parquet_table(path: str | Location, columns: list[str] | None = None) -> pa.Table:
    with open_parquet(path) as parquet:
        return parquet.read(columns=columns)


def iter_parquet_batches(
    path: str | Location, columns: list[str] | None = None, batch_rows: int = ROW_GROUP_ROWS
) -> Iterator[pa.RecordBatch]:
    """Stream a Parquet file batch by batch, holding one row group at a time."""
    with open_parquet(path) as parquet:
        yield from parquet.iter_batches(batch_size=batch_rows, columns=columns)


def is_dataset_directory(path: Location) -> bool:
    return (path / MANIFEST_NAME).exists() or (path / SHARDS_DIR).is_dir()


def verified_input(path: str | Location, record: ShardRecord | None = None) -> Location:
    """A task's input shard, checked against its shard record before the task reads it. Tasks carry the record the
    planner read from the manifest, so a task reads no manifest (at 90,000 shards one is tens of MB); without it,
    the record is looked up in the manifest."""
    path = as_location(path)
    dataset = Dataset(path.parent)
    return dataset.verify_shard(record or dataset.record(path.name.removesuffix(".parquet")))


@contextlib.contextmanager
def readable_input(path: str | Location, record: ShardRecord | None = None) -> Iterator[Location]:
    """A task's input shard, checked before any byte of it is used, as a file to read. On disk it is read in place;
    from an object store it is downloaded once into a private local file, checked there and read there, instead of
    being read once for its checksum and again for its rows."""
    location = as_location(path)
    if not is_remote(location):
        yield verified_input(location, record)
        return
    dataset = Dataset(location.parent)
    record = record or dataset.record(location.name.removesuffix(".parquet"))
    local = spool_path(location)
    try:
        try:
            location.fs.get_file(location.path, str(local))
        except FileNotFoundError:
            raise DatasetError(f"{location}: missing (its shard record lists it)") from None
        check_file(local, record.bytes, record.checksum, named=location)
        dataset.verify_shard(record, data_checked=True)
        yield local
    finally:
        local.unlink(missing_ok=True)


class Dataset:
    """A dataset directory, complete (with a manifest) or in progress (shard records only)."""

    def __init__(self, path: str | Location):
        self.path = as_location(path)
        self._verified: set[str] = set()

    @property
    def manifest_path(self) -> Location:
        return self.path / MANIFEST_NAME

    @property
    def is_complete(self) -> bool:
        return self.manifest_path.exists()

    def shard_path(self, name: str) -> Location:
        return self.path / f"{name}.parquet"

    def reject_path(self, name: str) -> Location:
        return self.path / REJECTS_DIR / f"{name}.parquet"

    def record_path(self, name: str) -> Location:
        return self.path / SHARDS_DIR / f"{name}.json"

    def prepare(self) -> None:
        for folder in (self.path / REJECTS_DIR, self.path / SHARDS_DIR):
            folder.mkdir(parents=True, exist_ok=True)

    def manifest(self) -> Manifest:
        """The manifest, checked against its own checksum and layout (parsed once per content and process)."""
        try:
            content = self.manifest_path.read_bytes()
        except FileNotFoundError:
            raise DatasetError(f"{self.path}: not a complete Gristmill dataset (no {MANIFEST_NAME})") from None
        return _parse_manifest(self.manifest_path, content)

    def completed_record(self, name: str) -> ShardRecord | None:
        path = self.record_path(name)
        if not path.exists():
            return None
        return read_model(path, ShardRecord)

    def committed_names(self) -> set[str]:
        """Names of the shards whose records exist: one listing, however many shards (a request each on a store)."""
        directory = self.path / SHARDS_DIR
        if not directory.exists():
            return set()
        return {path.name.removesuffix(".json") for path in directory.glob("*.json")}

    def shard_records(self) -> list[ShardRecord]:
        return [read_model(self.record_path(name), ShardRecord) for name in sorted(self.committed_names())]

    def records(self) -> list[ShardRecord]:
        """The shards to read: the manifest's when complete, else those committed so far."""
        return self.manifest().shards if self.is_complete else self.shard_records()

    def record(self, name: str) -> ShardRecord:
        found = next((record for record in self.records() if record.name == name), None)
        if found is None:
            raise DatasetError(f"{self.shard_path(name)}: not a shard of {self.path} (no shard record)")
        return found

    def check_record_file(self, record: ShardRecord) -> None:
        """A complete dataset's `_shards/<name>.json` must say what its manifest says."""
        path = self.record_path(record.name)
        if read_model(path, ShardRecord).model_dump() != record.model_dump():
            raise DatasetError(f"{path}: differs from the manifest's record of {record.name} (damaged)")

    def verify_shard(self, record: ShardRecord, data_checked: bool = False) -> Location:
        """Check a shard's data and ledger files (and, when complete, its record file) against `record` before
        they are read; a one-line DatasetError names the first damaged file. Returns the data file's path.
        `data_checked`: the caller checked a copy of the data file, so only the rest is checked here.

        Each shard is hashed once per `Dataset` object, however many passes a reader makes over it.
        """
        path = self.shard_path(record.name)
        if record.name in self._verified:
            return path
        if not data_checked:
            check_file(path, record.bytes, record.checksum)
        if record.ledger_checksum is not None:
            check_file(self.reject_path(record.name), record.ledger_bytes, record.ledger_checksum)
        if self.is_complete:
            self.check_record_file(record)
        self._verified.add(record.name)
        return path

    def check_sizes(self) -> None:
        """Every data and ledger file present at its recorded size: a stat each, for commands that read few shards."""
        for record in self.records():
            check_file(self.shard_path(record.name), record.bytes)
            if record.ledger_bytes is not None:
                check_file(self.reject_path(record.name), record.ledger_bytes)

    def verified_shards(self) -> Iterator[Location]:
        """Data shards in order, each verified just before the caller opens it."""
        for record in self.records():
            yield self.verify_shard(record)

    def schema(self) -> pa.Schema:
        if self.is_complete:
            return self.manifest().schema
        records = self.shard_records()
        if not records:
            raise DatasetError(f"{self.path}: no committed shards")
        return read_parquet_schema(self.verify_shard(records[0]))

    def iter_batches(self, columns: list[str] | None = None, batch_rows: int = ROW_GROUP_ROWS) -> Iterator[pa.RecordBatch]:
        for path in self.verified_shards():
            yield from iter_parquet_batches(path, columns=columns, batch_rows=batch_rows)

    def iter_rejects(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        for record in self.manifest().shards:
            self.verify_shard(record)
            yield from iter_parquet_batches(self.reject_path(record.name), columns=columns)

    def remove_temporaries(self) -> None:
        """Delete files left by writers that died before committing: only names of `temporary_name`'s shape,
        only where Gristmill's writers put them (the dataset, its ledger, shard records and work folder).
        Writers into an object store spool on local disk, so they leave nothing there."""
        if is_remote(self.path):
            return
        places = [self.path, self.path / REJECTS_DIR, self.path / SHARDS_DIR]
        work = self.path / WORK_DIR
        places += [work, *(folder for folder in work.rglob("*") if folder.is_dir())] if work.is_dir() else []
        for place in places:
            for leftover in place.glob(f".*{TEMP_MARK}*"):
                if TEMPORARY_NAME.fullmatch(leftover.name) and leftover.is_file() and not leftover.is_symlink():
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
        manifest.checksum = manifest_checksum(manifest)
        self.remove_temporaries()
        write_json_atomic(self.manifest_path, manifest.model_dump_json(indent=2))
        return manifest
