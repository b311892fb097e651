"""What a stage hands the run report about a dataset it wrote (sections of text, tables and plots, with the
statistics behind them), and what it is given to read that dataset one batch at a time. See docs/REPORTS.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from gristmill.pipeline.engine.dataset import ROW_GROUP_ROWS, WORK_DIR, Dataset, ShardRecord, iter_parquet_batches
from gristmill.pipeline.engine.files import as_location
from gristmill.pipeline.engine.report import Report, plt


class StageReportError(Exception):
    """A file a report hook reads is missing or corrupt; the message names it, and the report shows it as a warning."""


@dataclass(eq=False)
class ReportedDataset:
    """One dataset of a run (or alone), as a stage's report hook sees it: records, schema, config and summed counters."""

    name: str
    dataset: Dataset
    stage: str
    complete: bool
    records: list[ShardRecord]
    schema: pa.Schema
    config: dict[str, Any] = field(default_factory=dict)  # as the manifest recorded it; {} while partial
    stats: dict[str, int | float] = field(default_factory=dict)  # the stage's counters summed over shards

    def has(self, column: str) -> bool:
        return column in self.schema.names

    def shard_files(self) -> Iterator[Path]:
        """Data shards, each checked against its record (data, ledger, record file) the first time it is read."""
        for record in self.records:
            yield self.dataset.verify_shard(record)

    def batches(self, columns: list[str], batch_rows: int = ROW_GROUP_ROWS) -> Iterator[pa.RecordBatch]:
        """The given columns of every shard, one batch at a time, never the whole dataset."""
        for path in self.shard_files():
            yield from iter_parquet_batches(path, columns=columns, batch_rows=batch_rows)

    def ledger_batches(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """The given columns of every shard's reject ledger (id, stage, reason, detail), one batch at a time."""
        for record, _ in zip(self.records, self.shard_files()):  # checked before it is read
            ledger = self.dataset.reject_path(record.name)
            if ledger.exists():
                yield from iter_parquet_batches(ledger, columns=columns)

    @property
    def work_dir(self) -> Path:
        """The dataset's `_work/` folder, where a global view keeps its intermediate files."""
        return self.dataset.path / WORK_DIR

    def read_json(self, path: Path) -> Any:
        """A JSON file the stage left beside its dataset; unreadable or corrupt is a StageReportError naming it."""
        try:
            return json.loads(as_location(path).read_text())
        except OSError as error:
            raise StageReportError(f"{path}: unreadable ({error.strerror or error})") from None
        except ValueError as error:
            raise StageReportError(f"{path}: not valid JSON ({error})") from None


@dataclass
class Rows:
    """A table as a list of dicts; columns default to the keys of the first row."""

    rows: list[dict[str, Any]]
    columns: list[str] | None = None


@dataclass
class Plot:
    """A matplotlib figure drawn only when the report is rendered, so collecting statistics opens no figure."""

    draw: Callable[[], Any]
    caption: str


@dataclass
class StageSection:
    """One section a stage adds to the run report: its title, plain JSON statistics (kept in report.json) and the
    blocks shown, in the report writer's vocabulary (text, tables, figures)."""

    title: str
    statistics: dict[str, Any] = field(default_factory=dict)
    blocks: list[str | Rows | Plot] = field(default_factory=list)

    def text(self, paragraph: str) -> StageSection:
        self.blocks.append(paragraph)
        return self

    def table(self, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> StageSection:
        self.blocks.append(Rows(list(rows), list(columns) if columns else None))
        return self

    def figure(self, draw: Callable[[], Any], caption: str) -> StageSection:
        self.blocks.append(Plot(draw, caption))
        return self

    def render(self, report: Report) -> None:
        report.section(self.title)
        for block in self.blocks:
            if isinstance(block, Rows):
                report.table(block.rows, block.columns)
            elif isinstance(block, Plot):
                report.figure(block.draw(), block.caption)
            else:
                report.text(block)


def bar_chart(labels: list[str], series: dict[str, list[float]], xlabel: str, log: bool = False) -> plt.Figure:
    """Grouped horizontal bars: one group per label, one bar per series."""
    figure, axes = plt.subplots(figsize=(8, 0.22 * len(labels) * max(1, len(series)) + 1.2))
    height = 0.8 / max(1, len(series))
    positions = np.arange(len(labels))[::-1]
    for index, (name, values) in enumerate(series.items()):
        axes.barh(positions + (len(series) - 1 - 2 * index) * height / 2, values, height=height, label=name)
    axes.set_yticks(positions, labels)
    axes.set_xlabel(xlabel)
    if log:
        axes.set_xscale("log")
    if len(series) > 1:
        axes.legend(fontsize=8)
    return figure
