"""The stage API: a small class with a typed config, declared resources and a per-batch function.

Two kinds exist. A `SourceStage` turns external files (JSONL, Parquet, WARC) into documents,
one shard per file. A `MapStage` turns each shard of a dataset into one output shard; if it
needs a global view (a percentile, a cluster table) it also `summarize`s each shard into a
summary file and `reduce`s them once, possibly with tasks of its own, before any shard is
processed. Counting rows, bytes, rejects
and seconds is the runner's job, so a stage only says what it keeps and why it drops the rest.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from gristmill.pipeline.engine.dataset import REJECT_SCHEMA, read_parquet_table
from gristmill.pipeline.engine.files import Location, expand_globs
from gristmill.pipeline.engine.plugins import PluginError, explain_import_failure
from gristmill.pipeline.engine.stage_report import ReportedDataset, StageSection


class StageConfig(BaseModel):
    """Base of every stage config: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def refuse_unused(self, names: tuple[str, ...], why: str) -> None:
        """For an `after` validator: fields that only apply in another mode must keep their defaults, so a value the
        stage would ignore is an error. Defaults, not `model_fields_set`: a task rebuilds a config from its full dump."""
        if changed := [name for name in names if getattr(self, name) != type(self).model_fields[name].default]:
            raise ValueError(f"{changed[0]} {why}; it would be ignored")


def tagged_options(config: type[StageConfig], field: str, data: Any) -> Any:
    """For a `mode="before"` validator of a config whose `field` holds one of several option models, told apart
    by a discriminator (`backend: {kind: vllm, tensor_parallel_size: 2}`): a bare name stands for that kind with
    its defaults (`backend: vllm`), and an option written at the top of the config, the flat spelling of earlier
    releases, is refused in one line that spells out where it goes now."""
    if not isinstance(data, dict):
        return data
    info = config.model_fields[field]
    tag = info.discriminator
    data = dict(data)
    if isinstance(data.get(field), str):
        data[field] = {tag: data[field]}
    options = {name for member in typing.get_args(info.annotation) for name in member.model_fields}
    flat = {name: value for name, value in data.items() if name in options and name not in config.model_fields}
    if flat:
        chosen = data.get(field) or {}
        default = info.default if isinstance(info.default, BaseModel) else None
        names = ", ".join(flat)
        kind = flat.pop(tag, None) or (chosen.get(tag) if isinstance(chosen, dict) else None) or getattr(default, tag, "...")
        spelled = "".join(f", {name}: {json.dumps(value)}" for name, value in flat.items())
        raise ValueError(f"{names}: now inside {field}; write {field}: {{{tag}: {kind}{spelled}}}")
    return data


class SourceConfig(StageConfig):
    paths: list[str] = Field(min_length=1, description="input files or globs, read in sorted order")


class Resources(BaseModel):
    """What one task of a stage needs, so CPU and GPU stages can share one graph."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float = 1.0


@dataclass
class BatchResult:
    """The rows a stage keeps and the rows it rejects (id, reason, detail; the stage is filled in later)."""

    kept: pa.RecordBatch | pa.Table
    rejected: pa.Table
    # Counters a stage wants summed per shard and per dataset (documents per language, lines
    # removed, tokens dropped); they land in the shard record and the manifest as `stats`.
    stats: dict[str, int | float] = field(default_factory=dict)

    @staticmethod
    def keep_all(batch: pa.RecordBatch | pa.Table) -> BatchResult:
        return BatchResult(batch, empty_rejects())

    @staticmethod
    def split(batch: pa.RecordBatch | pa.Table, reasons: pa.Array, details: pa.Array | None = None) -> BatchResult:
        """Keep rows whose reason is null; reject the others with their reason (vectorised)."""
        keep = pc.is_null(reasons)
        rejected_mask = pc.invert(keep)
        if details is None:
            details = pa.nulls(len(reasons), pa.string())
        rejected = pa.table(
            {
                "id": pc.filter(batch.column("id"), rejected_mask),
                "stage": pa.nulls(pc.sum(rejected_mask).as_py() or 0, pa.string()),
                "reason": pc.filter(reasons, rejected_mask).cast(pa.string()),
                "detail": pc.filter(details, rejected_mask).cast(pa.string()),
            },
            schema=REJECT_SCHEMA,
        )
        return BatchResult(batch.filter(keep), rejected)


def empty_rejects() -> pa.Table:
    return REJECT_SCHEMA.empty_table()


def reject_rows(ids: list[str], reason: str, details: list[str | None]) -> pa.Table:
    """Ledger rows for records that never became documents (malformed input and the like)."""
    return pa.table(
        {"id": ids, "stage": [None] * len(ids), "reason": [reason] * len(ids), "detail": details},
        schema=REJECT_SCHEMA,
    )


class Stage(ABC):
    """Common ground of every stage: a name, a config class, resources and a once-per-worker setup."""

    name: ClassVar[str]
    Config: ClassVar[type[StageConfig]]
    resources: ClassVar[Resources] = Resources()
    # A stage that splits documents into several rows (chunks, sequences) sets this to False and
    # gives every output row a `document_id`; the ledger then counts documents, not rows. One
    # document's rows must come from one batch.
    rows_are_documents: ClassVar[bool] = True

    def __init__(self, config: StageConfig):
        self.config = config

    @classmethod
    def resources_for(cls, config: StageConfig) -> Resources:
        """What one task needs with this config; a stage whose needs depend on its config (a GPU backend or a CPU
        one) overrides it."""
        return cls.resources

    def setup(self) -> None:
        """Load models or other expensive state; called once per worker, not per batch."""

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        """The schema of output shards (input schema plus any annotation columns)."""
        return input_schema

    @classmethod
    def report_sections(cls, dataset: ReportedDataset) -> list[StageSection]:
        """Sections this stage adds to the run report about a dataset it wrote (cluster sizes, before and after,
        token drops), read through `dataset` one batch at a time; none by default. Contract: docs/REPORTS.md."""
        return []


# A source stage counts the documents an input holds by a check independent of its parser (WARC
# headers found by a byte scan, newline-separated lines) and reports it under this stats key; the
# runner then uses it as the shard's rows_in, so a record the parser swallowed breaks the ledger
# invariant instead of vanishing.
INPUT_DOCUMENTS_STAT = "input_documents"


class SourceStage(Stage):
    """Reads external files into documents; each input file becomes one output shard.

    `read` should report `INPUT_DOCUMENTS_STAT` in its batch stats (summed over the file)."""

    Config: ClassVar[type[SourceConfig]] = SourceConfig

    def list_inputs(self) -> list[str]:
        """Expand the configured paths and globs, sorted, so shard numbering is deterministic."""
        return expand_globs(self.config.paths)

    @abstractmethod
    def schema(self) -> pa.Schema:
        """The schema of the documents this source writes."""

    @abstractmethod
    def read(self, path: str) -> Iterator[BatchResult]:
        """Yield documents from one input file; malformed records are rejected, never raised."""


@dataclass
class ReduceContext:
    """What a global stage's reduce step gets: the shards' summary files and the executor.

    `run(fn, items)` runs a picklable top-level function over items as tasks on the run's
    executor (so a reduce can itself be spread over a Dask cluster) and returns the results
    in item order; it raises if any task fails. `work_dir` is the dataset's `_work/` folder
    for intermediate files, kept after the run. The summary of shard NAME is
    `work_dir/summaries/NAME.parquet`, so a view handed to every shard can name the folder, not each file.
    """

    shard_names: list[str]
    summary_files: list[Location | None]  # per shard, in order; None where a shard had no rows
    work_dir: Location
    run: Callable[[Callable[[Any], Any], list[Any]], list[Any]]

    def read_summaries(self) -> pa.Table | None:
        """Every summary in shard order, as one table; for summaries small enough to hold."""
        tables = [read_parquet_table(path) for path in self.summary_files if path is not None]
        return pa.concat_tables(tables) if tables else None


class MapStage(Stage):
    """Transforms one dataset shard into one output shard, batch by batch.

    Before a shard, the runner calls `open_shard` with its name and the dataset's work folder, so any stage can
    keep intermediate files (a cache, an index) without a global view. A stage that needs one says so per config
    in `needs_global_view_for`; it then gets `bind` with the reduced view as well."""

    # The default of `needs_global_view_for`; a stage whose need depends on its config overrides that instead.
    needs_global_view: ClassVar[bool] = False

    @classmethod
    def needs_global_view_for(cls, config: StageConfig) -> bool:
        """Whether this config needs summaries of every shard and a reduce before any shard is processed."""
        return cls.needs_global_view

    def summarize(self, batch: pa.RecordBatch) -> pa.Table:
        """Per-batch facts for the global view, written to disk per shard; a stage whose view
        does not depend on its input (e.g. an index of external files) leaves this out."""
        raise NotImplementedError

    def reduce(self, context: ReduceContext) -> Any:
        """Combine every shard's summaries into the global view; the result must pickle and stay small."""
        raise NotImplementedError

    def open_shard(self, shard_name: str, work_dir: Location) -> None:
        """Receive the name of the shard about to be processed and the dataset's `_work/` folder, for
        intermediate files kept after the run (create what you use in it); called before every shard."""
        self.shard_name = shard_name
        self.work_dir = work_dir

    def bind(self, global_view: Any, shard_name: str) -> None:
        """Receive the reduced global view, and the name of the shard about to be processed (after `open_shard`,
        only when the config needs a global view)."""
        self.global_view = global_view
        self.shard_name = shard_name

    @abstractmethod
    def process(self, batch: pa.RecordBatch) -> BatchResult:
        """Decide, for every row of the batch, to keep it (maybe annotated) or reject it with a reason."""


_REGISTRY: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage available to the graph and the CLI under `cls.name`."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"stage name {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


STAGE_ENTRY_POINTS = "gristmill.stages"


@functools.cache
def load_installed_stages() -> None:
    """Import every stage an installed distribution declares in the `gristmill.stages` entry-point group,
    Gristmill's own included, so built-in and third-party stages are found the same way. A stage that cannot
    load is a PluginError naming its entry point."""
    for entry in importlib.metadata.entry_points(group=STAGE_ENTRY_POINTS):
        where = f"installed stage {entry.name} = {entry.value}"
        try:
            stage = entry.load()
        except Exception as error:  # noqa: BLE001 - one line naming the entry point, not its traceback
            raise PluginError(where, explain_import_failure(entry.module, error)) from None
        if getattr(stage, "name", None) != entry.name:
            raise PluginError(where, f"names a stage called {getattr(stage, 'name', None)!r}")
        register(stage)


def registered_stages() -> dict[str, type[Stage]]:
    """Every stage by name: the installed ones, and those that imported modules (plugins) registered."""
    load_installed_stages()
    return dict(sorted(_REGISTRY.items()))


def stage_class(name: str) -> type[Stage]:
    known = registered_stages()
    if name not in known:
        raise KeyError(f"unknown stage {name!r}; known stages: {', '.join(known)}")
    return known[name]
