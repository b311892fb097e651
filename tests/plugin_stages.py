"""Stages used only by tests: deliberate failures, slowness and a global view.

Loaded through a graph's `plugins:` list, the same way users add their own stages.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from gristmill.pipeline.engine.stage import BatchResult, MapStage, ReduceContext, StageConfig, register


class FailOnConfig(StageConfig):
    id_prefix: str = Field(description="Raise on batches holding a document whose id starts with this.")


@register
class FailOn(MapStage):
    """Raises on chosen shards, to exercise retries and failure reports."""

    name = "test_fail_on"
    Config = FailOnConfig

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        if pc.any(pc.starts_with(batch.column("id"), self.config.id_prefix)).as_py():
            raise ValueError("deliberate failure for the test")
        return BatchResult.keep_all(batch)


class FlakyConfig(StageConfig):
    marker_dir: str


@register
class Flaky(MapStage):
    """Fails the first attempt at each batch, then succeeds: a transient fault."""

    name = "test_flaky"
    Config = FlakyConfig

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        marker = Path(self.config.marker_dir) / batch.column("id")[0].as_py().replace("/", "_")
        if not marker.exists():
            marker.touch()
            raise RuntimeError("transient fault")
        return BatchResult.keep_all(batch)


class SlowConfig(StageConfig):
    seconds_per_batch: float = 0.2


@register
class SlowCopy(MapStage):
    """Copies its input slowly, so a test can kill a run halfway."""

    name = "test_slow_copy"
    Config = SlowConfig

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        time.sleep(self.config.seconds_per_batch)
        return BatchResult.keep_all(batch)


class KillWorkerConfig(StageConfig):
    marker_dir: str
    id_prefix: str


@register
class KillWorkerOnce(MapStage):
    """Kills its own worker process the first time it meets a chosen shard."""

    name = "test_kill_worker_once"
    Config = KillWorkerConfig

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        marker = Path(self.config.marker_dir) / "killed"
        first_id = batch.column("id")[0].as_py()
        if first_id.startswith(self.config.id_prefix) and not marker.exists():
            marker.touch()
            os._exit(1)
        return BatchResult.keep_all(batch)


CRASH_VARIABLE = "GRISTMILL_TEST_CRASH"


class CrashWorkerConfig(StageConfig):
    id_prefix: str
    how: Literal["exit_3", "sigkill"]
    seconds_per_batch: float = 0.0


@register
class CrashWorker(MapStage):
    """Ends its own process on a chosen shard (os._exit(3) or SIGKILL) while $GRISTMILL_TEST_CRASH is 1, as
    a segfaulting native library or the OOM killer would; unsetting it is the fix. Other shards copy slowly,
    so they are in flight when the worker dies."""

    name = "test_crash_worker"
    Config = CrashWorkerConfig

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        if os.environ.get(CRASH_VARIABLE) == "1" and batch.column("id")[0].as_py().startswith(self.config.id_prefix):
            if self.config.how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(3)
        time.sleep(self.config.seconds_per_batch)
        return BatchResult.keep_all(batch)


class LongestConfig(StageConfig):
    keep_fraction: float = Field(0.5, gt=0, le=1)


@register
class KeepLongest(MapStage):
    """Keeps the globally longest fraction of documents: needs every shard's lengths first."""

    name = "test_keep_longest"
    Config = LongestConfig
    needs_global_view = True

    def summarize(self, batch: pa.RecordBatch) -> pa.Table:
        return pa.table({"length": pc.utf8_length(batch.column("text"))})

    def reduce(self, context: ReduceContext) -> int:
        lengths = sorted(context.read_summaries().column("length").to_pylist(), reverse=True)
        return lengths[max(int(len(lengths) * self.config.keep_fraction) - 1, 0)]

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        short = pc.less(pc.utf8_length(batch.column("text")), self.global_view)
        reasons = pc.if_else(short, "below_global_cutoff", pa.nulls(batch.num_rows, pa.string()))
        return BatchResult.split(batch, reasons)


class SentencesConfig(StageConfig):
    pass


@register
class SplitSentences(MapStage):
    """Splits each document into one row per word: a stage whose rows are not documents."""

    name = "test_split_sentences"
    Config = SentencesConfig
    rows_are_documents = False

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return pa.schema([("document_id", pa.string()), ("sentence", pa.string())])

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        sentences = pc.split_pattern(batch.column("text"), " ")
        lengths = pc.list_value_length(sentences)
        rows = pa.table({
            "document_id": pc.take(batch.column("id"), pc.list_parent_indices(sentences)),
            "sentence": pc.list_flatten(sentences),
        })
        no_sentences = pc.equal(lengths, 0)
        reasons = pc.if_else(no_sentences, "no_sentences", pa.nulls(batch.num_rows, pa.string()))
        return BatchResult(rows, BatchResult.split(batch, reasons).rejected, stats={"words": rows.num_rows})


@register
class BrokenReduce(KeepLongest):
    """A global stage whose reduce step raises, as a bad benchmark file or column would."""

    name = "test_broken_reduce"

    def reduce(self, context: ReduceContext) -> int:
        raise ValueError("no such column: quality")
