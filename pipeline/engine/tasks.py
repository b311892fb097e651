"""One shard task: the pure, picklable unit of work that every executor runs.

A task reads one input (file or shard), runs a stage over it batch by batch, commits the
output shard and its reject ledger atomically, then writes the shard record that marks it
done. A task whose record exists is skipped, which is all that resuming needs.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from gristmill.pipeline.engine.dataset import (
    REJECT_SCHEMA,
    WORK_DIR,
    Dataset,
    ParquetShardWriter,
    ShardRecord,
    iter_parquet_batches,
    read_parquet_schema,
    readable_input,
    write_json_atomic,
)
from gristmill.pipeline.engine.files import Location, as_location
from gristmill.pipeline.engine.native_threads import single_threaded_blas
from gristmill.pipeline.engine.plugins import import_plugins
from gristmill.pipeline.engine.stage import (
    INPUT_DOCUMENTS_STAT,
    BatchResult,
    MapStage,
    SourceStage,
    Stage,
    stage_class,
)


@dataclass(frozen=True)
class ShardTask:
    node: str
    stage: str
    config: dict[str, Any]
    source: str
    output: str
    name: str
    plugins: tuple[str, ...] = ()
    global_view: Any = field(default=None, compare=False)
    source_record: ShardRecord | None = None  # a map stage's input shard as its manifest lists it


@dataclass(frozen=True)
class SummaryTask:
    """Phase one of a stage with a global view: summarise one input shard into a file."""

    stage: str
    config: dict[str, Any]
    source: str
    output: str
    plugins: tuple[str, ...] = ()
    source_record: ShardRecord | None = None


@dataclass
class TaskOutcome:
    task: ShardTask
    record: ShardRecord | None = None
    skipped: bool = False
    error: str | None = None


@functools.lru_cache(maxsize=16)
def _stage_instance(stage_name: str, config_json: str, plugins: tuple[str, ...], thread: int) -> Stage:
    """Build and set up a stage once per worker thread and config.

    Per thread, because a Dask worker started with several threads runs tasks side by side,
    and a stage bound to one shard's global view must not be shared between them.
    """
    import_plugins(plugins)
    cls = stage_class(stage_name)
    stage = cls(cls.Config.model_validate(json.loads(config_json)))
    stage.setup()
    return stage


def stage_for(stage_name: str, config: dict[str, Any], plugins: tuple[str, ...]) -> Stage:
    return _stage_instance(stage_name, json.dumps(config, sort_keys=True), plugins, threading.get_ident())


def text_bytes(data: pa.RecordBatch | pa.Table) -> int:
    if "text" not in data.schema.names or data.num_rows == 0:
        return 0
    return pc.sum(pc.binary_length(data.column("text"))).as_py() or 0


def documents_in(stage: Stage, kept: pa.RecordBatch | pa.Table) -> int:
    """Documents a batch of output rows holds: one per row, or distinct `document_id`s for splitting stages."""
    if stage.rows_are_documents or kept.num_rows == 0:
        return kept.num_rows
    return pc.count_distinct(kept.column("document_id")).as_py()


@single_threaded_blas()
def run_summary(task: SummaryTask) -> str | None:
    """Write one shard's summary atomically (skipped if present); None when the shard has no rows."""
    output = as_location(task.output)
    if output.exists():
        return task.output
    stage = stage_for(task.stage, task.config, task.plugins)
    assert isinstance(stage, MapStage)
    writer = None
    try:
        with readable_input(task.source, task.source_record) as source:
            for batch in iter_parquet_batches(source):
                summary = stage.summarize(batch)
                if writer is None:
                    output.parent.mkdir(parents=True, exist_ok=True)
                    writer = ParquetShardWriter(output, summary.schema)
                writer.write(summary)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is None:
        return None
    writer.commit()
    return task.output


@single_threaded_blas()
def run_task(task: ShardTask) -> TaskOutcome:
    """Run one shard task; never raises, so every executor reports failures the same way."""
    try:
        done = Dataset(task.output).completed_record(task.name)
        if done is not None:
            return TaskOutcome(task, done, skipped=True)
        return TaskOutcome(task, _execute(task))
    except Exception:  # noqa: BLE001 - the traceback travels back to the runner
        return TaskOutcome(task, error=traceback.format_exc())


def _execute(task: ShardTask) -> ShardRecord:
    with contextlib.ExitStack() as inputs:
        return _execute_with(task, inputs)


def _execute_with(task: ShardTask, inputs: contextlib.ExitStack) -> ShardRecord:
    """`inputs` holds a map stage's input open (a local copy of a shard on an object store) until the task ends."""
    started = time.perf_counter()
    stage = stage_for(task.stage, task.config, task.plugins)
    dataset = Dataset(task.output)
    counted_input: list[int] = [0, 0]  # rows, text bytes seen by a map stage

    if isinstance(stage, SourceStage):
        schema = stage.schema()
        results: Iterator[BatchResult] = stage.read(task.source)
    else:
        assert isinstance(stage, MapStage)
        stage.open_shard(task.name, dataset.path / WORK_DIR)
        if stage.needs_global_view_for(stage.config):
            stage.bind(task.global_view, task.name)
        source = inputs.enter_context(readable_input(task.source, task.source_record))  # checked before any byte is used
        schema = stage.output_schema(read_parquet_schema(source))
        results = _map_batches(stage, source, counted_input)

    data_writer = ParquetShardWriter(dataset.shard_path(task.name), schema)
    reject_writer = ParquetShardWriter(dataset.reject_path(task.name), REJECT_SCHEMA)
    rows_out, documents_out, text_out, rejected, stats = 0, 0, 0, Counter(), Counter()
    try:
        for result in results:
            data_writer.write(result.kept)
            rows_out += result.kept.num_rows
            documents_out += documents_in(stage, result.kept)
            stats.update(result.stats)
            text_out += text_bytes(result.kept)
            if result.rejected.num_rows:
                ledger = result.rejected.set_column(
                    1, "stage", pa.array([task.node] * result.rejected.num_rows, pa.string())
                )
                reject_writer.write(ledger)
                rejected.update(ledger.column("reason").to_pylist())
    except BaseException:
        data_writer.abort()
        reject_writer.abort()
        raise

    if isinstance(stage, SourceStage):
        # The independent count when the source gives one; otherwise the invariant holds by construction.
        rows_in = int(stats.get(INPUT_DOCUMENTS_STAT, documents_out + sum(rejected.values())))
        text_in = text_out
    else:
        rows_in, text_in = counted_input
    if rows_in != documents_out + sum(rejected.values()):
        data_writer.abort()
        reject_writer.abort()
        raise RuntimeError(
            f"stage {task.stage!r} broke the ledger invariant on {task.source}: "
            f"{rows_in} in != {documents_out} out + {sum(rejected.values())} rejected"
        )
    ledger_size, ledger_checksum = reject_writer.commit()
    size, checksum = data_writer.commit()
    record = ShardRecord(
        name=task.name,
        source=task.source,
        rows=rows_out,
        documents_out=documents_out,
        bytes=size,
        checksum=checksum,
        rows_in=rows_in,
        rejected=dict(sorted(rejected.items())),
        text_bytes_in=text_in,
        text_bytes_out=text_out,
        seconds=round(time.perf_counter() - started, 6),
        stats=dict(sorted(stats.items())),
        ledger_bytes=ledger_size,
        ledger_checksum=ledger_checksum,
    )
    write_json_atomic(dataset.record_path(task.name), record.model_dump_json(indent=2))
    return record


def _map_batches(stage: MapStage, source: Location, counted: list[int]) -> Iterator[BatchResult]:
    for batch in iter_parquet_batches(source):
        counted[0] += batch.num_rows
        counted[1] += text_bytes(batch)
        yield stage.process(batch)
