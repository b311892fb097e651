"""`exclude`: drop documents whose id, or whose exact text, is on a list file.

Keeps a held-out slice out of all training data (`gristmill ablate`) and applies takedown lists; a listed text
is found under any id by `text_hash`, the xxh3-128 of its exact UTF-8 bytes.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from gristmill.pipeline.engine.dataset import open_parquet
from gristmill.pipeline.engine.files import Location
from gristmill.pipeline.engine.stage import BatchResult, MapStage, StageConfig, register
from gristmill.stages.ingest.read_text import DAMAGED_STREAM_ERRORS, open_bytes
from pydantic import Field, field_validator

ID_COLUMN = "id"
HASH_COLUMN = "text_hash"
LISTED_ID = "listed_id"
LISTED_TEXT = "listed_text"
HEX_DIGEST = r"^[0-9a-f]{32}$"


def text_hash(text: str) -> str:
    """The key a listed text is matched by: xxh3-128 of the exact UTF-8 text, as 32 lowercase hex digits."""
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8"))


def text_hashes(texts: pa.Array | pa.ChunkedArray | list[str | None]) -> list[str | None]:
    """`text_hash` of every text, None for a null one (so a null text never matches)."""
    if isinstance(texts, list):
        return [None if text is None else text_hash(text) for text in texts]
    utf8 = pc.cast(texts, pa.large_binary()).to_pylist()  # the bytes as stored: nothing decoded or encoded again
    return [None if text is None else xxhash.xxh3_128_hexdigest(text) for text in utf8]


@dataclass(frozen=True)
class ExclusionList:
    """The listed ids and text hashes, distinct and without nulls, as Arrow value sets for `pc.is_in`."""

    ids: pa.Array
    text_hashes: pa.Array


def read_exclusion_list(path: str) -> ExclusionList:
    """The list in a Parquet (`.parquet`) or JSONL file (plain or compressed), loaded once per process and file
    version; any problem is a ValueError of one line naming the file."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read ({error.strerror or error})") from None
    return _read_exclusion_list(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_exclusion_list(path: str, size: int, modified_ns: int) -> ExclusionList:
    """Cached by size and modification time too, so a list rewritten in place is read again."""
    try:
        columns = _parquet_columns(path) if path.endswith(".parquet") else _jsonl_columns(path)
    except (pa.ArrowException, *DAMAGED_STREAM_ERRORS) as error:  # unreadable, not Parquet, damaged compression
        reason = getattr(error, "strerror", None) or next(iter(str(error).splitlines()), "") or type(error).__name__
        raise ValueError(f"{path}: cannot read ({reason})") from None
    if not columns:
        raise ValueError(f"{path}: has neither an {ID_COLUMN!r} nor a {HASH_COLUMN!r} column")
    empty = pa.array([], pa.string())
    ids = pc.unique(pc.drop_null(columns.get(ID_COLUMN, empty)))
    hashes = pc.unique(pc.utf8_lower(pc.drop_null(columns.get(HASH_COLUMN, empty))))
    malformed = pc.invert(pc.match_substring_regex(hashes, HEX_DIGEST))
    if pc.any(malformed).as_py():
        example = pc.filter(hashes, malformed)[0].as_py()
        raise ValueError(f"{path}: {HASH_COLUMN} {example!r} is not 32 hex digits (an xxh3-128 digest; see text_hash)")
    return ExclusionList(ids, hashes)


def _parquet_columns(path: str) -> dict[str, pa.Array]:
    with open_parquet(path) as parquet:
        schema = parquet.schema_arrow
        present = [name for name in (ID_COLUMN, HASH_COLUMN) if name in schema.names]
        for name in present:
            kind = schema.field(name).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
                raise ValueError(f"{path}: column {name!r} holds {kind}, not strings")
        table = parquet.read(columns=present) if present else None
    return {name: pc.cast(table.column(name), pa.string()).combine_chunks() for name in present}


def _jsonl_columns(path: str) -> dict[str, pa.Array]:
    values: dict[str, list[str | None]] = {ID_COLUMN: [], HASH_COLUMN: []}
    with open_bytes(path) as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            record = _json_object(line)
            if record is None:  # a takedown entry must not be skipped quietly
                raise ValueError(f"{path}: line {number} is not a JSON object")
            for name, column in values.items():
                value = record.get(name)
                if value is not None and not isinstance(value, str):
                    raise ValueError(f"{path}: line {number}: {name} is {json.dumps(value)}, not a string")
                column.append(value)
    # A JSONL file has no schema: a column is there when some record gives it a value.
    return {name: pa.array(column, pa.string()) for name, column in values.items()
            if any(value is not None for value in column)}


def _json_object(line: bytes) -> dict | None:
    """The JSON object on a line; None for bad JSON, bad UTF-8 or another JSON value."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class ExcludeConfig(StageConfig):
    list: str = Field(
        description=f"Parquet (.parquet) or JSONL file with a string column {ID_COLUMN!r} and/or {HASH_COLUMN!r} "
        "(xxh3-128 hex of the exact UTF-8 text); a document whose id or text hash is listed is dropped."
    )
    text_column: str = Field("text", min_length=1, description="Column whose text is hashed.")

    @field_validator("list")
    @classmethod
    def list_is_readable(cls, path: str) -> str:
        """Read here, at the edge, so a bad list is one line before any shard runs; cached, so setup reuses it."""
        try:
            read_exclusion_list(path)
        except ValueError as error:  # the error line ends with the path already ("got '...'")
            raise ValueError(str(error).removeprefix(f"{path}: ")) from None
        return path


@register
class Exclude(MapStage):
    """Reject documents whose id is listed (`listed_id`), or else whose text hash is listed (`listed_text`)."""

    name = "exclude"
    Config = ExcludeConfig

    def setup(self) -> None:
        self.listed = read_exclusion_list(self.config.list)

    def open_shard(self, shard_name: str, work_dir: Location) -> None:
        """Look at the file again before each shard: a worker's stage outlives a run, and the list may have
        changed since (a stat; the list is read again only if it did)."""
        super().open_shard(shard_name, work_dir)
        self.listed = read_exclusion_list(self.config.list)

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        listed = read_exclusion_list(self.config.list)  # also asked of a stage never set up (an input with no shards)
        if len(listed.text_hashes) and self.config.text_column not in input_schema.names:
            raise ValueError(f"exclude: no column {self.config.text_column!r} to hash "
                             f"(columns: {', '.join(input_schema.names)})")
        return input_schema

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        rows = batch.num_rows
        reasons = pa.nulls(rows, pa.string())
        details = pa.nulls(rows, pa.string())
        if len(self.listed.ids):
            listed_id = pc.is_in(batch.column(ID_COLUMN), value_set=self.listed.ids)
            reasons = pc.if_else(listed_id, LISTED_ID, reasons)
        if len(self.listed.text_hashes):
            hashes = pa.array(text_hashes(batch.column(self.config.text_column)), pa.string())
            listed_text = pc.and_(pc.is_in(hashes, value_set=self.listed.text_hashes), pc.is_null(reasons))
            reasons = pc.if_else(listed_text, LISTED_TEXT, reasons)
            details = pc.if_else(listed_text, pc.binary_join_element_wise(f"{HASH_COLUMN}=", hashes, ""), details)
        return BatchResult.split(batch, reasons, details)
