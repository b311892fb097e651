"""Read labelled documents for classifier training: a dataset, Parquet or JSONL input narrowed by a filter, with
provenance (files, sizes, checksums, counts) so a model card can name exactly what it was trained on.

The filter language is `column op literal`, parsed with Python's parser and never evaluated.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gristmill.pipeline.engine.dataset import file_checksum
from gristmill.pipeline.engine.files import expand_globs
from gristmill.stages.ingest.read_text import open_text

COMPARISONS = {"==": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater,
               ">=": pc.greater_equal}
SYMBOLS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.In: "in"}


@dataclass(frozen=True)
class Condition:
    """`column op literal`, the whole filter language: parsed, never evaluated."""

    column: str
    operator: str
    value: Any

    def mask(self, table: pa.Table) -> pa.Array:
        """Rows that satisfy the condition; a null value never does."""
        if self.column not in table.column_names:
            raise ValueError(f"filter column {self.column!r} is not in the data (columns: {', '.join(table.column_names)})")
        column = table.column(self.column)
        try:
            if self.operator == "in":
                matched = pc.is_in(column, value_set=pa.array(self.value))
            else:
                matched = COMPARISONS[self.operator](column, pa.scalar(self.value))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise ValueError(f"filter {self.column} {self.operator} {self.value!r}: cannot compare a "
                             f"{column.type} column with {type(self.value).__name__}") from None
        return pc.fill_null(matched, False)


def parse_where(expression: str) -> Condition:
    """Parse `column op literal` (op: == != < <= > >= in) with Python's parser; literals only, nothing runs."""
    problem = f"cannot read filter {expression!r}: expected `column op literal`, op one of == != < <= > >= in"
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError:
        raise ValueError(problem) from None
    if not (isinstance(tree, ast.Compare) and len(tree.ops) == 1 and isinstance(tree.left, ast.Name)):
        raise ValueError(problem)
    try:
        value = ast.literal_eval(tree.comparators[0])
    except ValueError:
        raise ValueError(f"{problem}; the right-hand side must be a literal (string, number, bool or list)") from None
    symbol = SYMBOLS.get(type(tree.ops[0]))
    if symbol == "in":
        if not isinstance(value, (list, tuple, set)) or not value:
            raise ValueError(f"{problem}; `in` needs a non-empty list")
        return Condition(tree.left.id, "in", sorted(value, key=str))
    if symbol is None or isinstance(value, (list, tuple, set, dict)):
        raise ValueError(problem)
    return Condition(tree.left.id, symbol, value)


def input_files(path: str) -> list[Path]:
    """A dataset directory's shards, a glob's matches, or one file (Parquet or JSONL, maybe .gz/.zst)."""
    if Path(path).is_dir():
        files = sorted(Path(path).glob("*.parquet"))
    else:
        files = [Path(match) for match in expand_globs([path])]
    missing = [str(file) for file in files if not file.is_file()]
    if not files or missing:
        raise ValueError(f"{path}: no input files found" + (f" ({', '.join(missing)} missing)" if missing else ""))
    return files


def read_file(path: Path, columns: list[str]) -> tuple[pa.Table, int]:
    """The wanted columns (nulls where a file lacks one) and the count of malformed JSONL lines skipped.

    The first column is the text: a JSONL value there that is not a string counts as missing.
    """
    try:
        table, malformed = _read_columns(path, columns)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise ValueError(f"{path}: cannot read columns {columns}: {error}") from None
    for name in columns:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows))
    return table.select(columns), malformed


def _read_columns(path: Path, columns: list[str]) -> tuple[pa.Table, int]:
    if path.name.endswith(".parquet"):
        present = set(pq.read_schema(path).names)
        table = pq.read_table(path, columns=[name for name in columns if name in present])
        malformed = 0
    else:
        rows, malformed = [], 0
        with open_text(str(path)) as lines:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    malformed += 1
                    continue
                if not isinstance(record, dict):
                    malformed += 1
                    continue
                row = {name: record.get(name) for name in columns}
                row[columns[0]] = row[columns[0]] if isinstance(row[columns[0]], str) else None
                rows.append(row)
        table = pa.Table.from_pylist(rows) if rows else pa.table({name: pa.nulls(0) for name in columns})
    return table, malformed


def read_documents(path: str, where: str | None, columns: list[str], role: str) -> tuple[pa.Table, dict[str, Any]]:
    """Documents of one input, narrowed by a filter, and a provenance record (files, sizes, hashes, counts)."""
    condition = parse_where(where) if where else None
    wanted = list(dict.fromkeys([*columns, *([condition.column] if condition else [])]))
    tables, files, malformed = [], [], 0
    for file in input_files(path):
        table, bad_lines = read_file(file, wanted)
        tables.append(table)
        malformed += bad_lines
        files.append({"path": str(file), "bytes": file.stat().st_size, "checksum": file_checksum(file)})
    table = pa.concat_tables(tables, promote_options="permissive")
    rows_read = table.num_rows
    if condition:
        table = table.filter(condition.mask(table))
    text = table.column(columns[0])
    table = table.filter(pc.fill_null(pc.greater(pc.utf8_length(text.cast(pa.string())), 0), False))
    record = {"role": role, "path": path, "where": where, "files": files, "rows_read": rows_read,
              "malformed_lines": malformed, "rows_selected": table.num_rows}
    return table.select(columns), record
