"""The run report of a run directory or one dataset, as HTML, Markdown and JSON (`gristmill report`).

Funnel, distributions, per-source breakdown and timings are read from what a run leaves on disk (shard records,
reject ledgers, the run summary and event log, export stats), a few columns of one shard at a time, never all text;
each stage adds its own sections through its `report_sections` hook, so this module knows no stage by name.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gristmill.pipeline.engine.dataset import (
    Dataset,
    is_dataset_directory,
    iter_parquet_batches,
    open_parquet,
    read_parquet_schema,
)
from gristmill.pipeline.engine.files import Location, as_location, is_remote
from gristmill.pipeline.engine.report import Report, plt
from gristmill.pipeline.engine.runner import EVENTS_NAME, FAILURES_DIR, RUN_MARKER, SUMMARY_NAME
from gristmill.pipeline.engine.stage import registered_stages
from gristmill.pipeline.engine.stage_report import ReportedDataset, StageReportError, StageSection, bar_chart
from gristmill.pipeline.tokens.export import STATS_FORMAT as TOKEN_STATS_FORMAT
from gristmill.pipeline.tokens.mixture import PLAN_FORMAT

TOKENIZER_EVAL_DIR = "tokenizer_eval"
NO_VALUE = "(none)"
# Text lengths in characters: 20 log-spaced bins per decade from 1 to 10^8; empty texts are counted apart.
LENGTH_EDGES = np.logspace(0, 8, 161)
SCORE_BINS = 50
LINE_STYLES = ("-", "--", ":", "-.")  # overlaid histograms stay apart where they coincide
KEPT_KEYS = 1000  # sources, domains and languages kept in report.json per dataset (a crawl has millions of domains)


class ReportError(Exception):
    """The path is neither a run directory nor a dataset; the message names it."""


# ---------------------------------------------------------------------------------------------------------------------
# What is on disk


@dataclass(eq=False)
class DatasetNode(ReportedDataset):
    """One dataset of a run (a graph node's output), with where its parents are and its footer statistics."""

    parent_paths: list[str] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)  # names of parent datasets within the run
    footers: dict[str, tuple[bool, float, float]] = field(default_factory=dict)  # column -> footer_statistics

    @property
    def is_documents(self) -> bool:
        """Rows are documents with text (not pieces of documents)."""
        return "text" in self.schema.names and "document_id" not in self.schema.names


def load_node(path: Path) -> DatasetNode | None:
    """A dataset directory as a node; None when it has no committed shard yet."""
    dataset = Dataset(path)
    if dataset.is_complete:
        manifest = dataset.manifest()
        return DatasetNode(path.name, dataset, manifest.stage, True, manifest.shards, manifest.schema,
                           manifest.config, manifest.stats, list(manifest.parents))
    records = dataset.shard_records()
    if not records:
        return None
    marker = path / RUN_MARKER
    stage = read_json(marker).get("stage", "?") if marker.exists() else "?"
    stats: Counter[str] = Counter()
    for record in records:
        stats.update(record.stats)
    schema = read_parquet_schema(dataset.verify_shard(records[0]))
    return DatasetNode(path.name, dataset, stage, False, records, schema, stats=dict(stats))


def read_json(path: Path) -> Any:
    """A JSON object the report needs; unreadable, corrupt or not an object is a ReportError naming the file."""
    try:
        payload = json.loads(path.read_text())
    except OSError as error:
        raise ReportError(f"{path}: unreadable ({error.strerror or error})") from None
    except ValueError as error:
        raise ReportError(f"{path}: corrupt JSON ({error})") from None
    if not isinstance(payload, dict):
        raise ReportError(f"{path}: corrupt (not a JSON object)")
    return payload


def run_summary(run_dir: Path) -> dict[str, Any]:
    """The run's `_summary.json`, or {} where the run wrote none yet."""
    path = run_dir / SUMMARY_NAME
    return read_json(path) if path.exists() else {}


def load_run(path: Path) -> tuple[str, list[DatasetNode]]:
    """('dataset', [node]) for a dataset directory, ('run', nodes in run order) for a run directory."""
    if not path.is_dir():
        raise ReportError(f"{path}: no such directory")
    if is_dataset_directory(path):
        node = load_node(path)
        if node is None:
            raise ReportError(f"{path}: dataset has no completed shard yet")
        return "dataset", [node]
    nodes = [node for child in sorted(path.iterdir(), key=str) if child.is_dir() and is_dataset_directory(child)
             if (node := load_node(child)) is not None]
    if not nodes:
        raise ReportError(f"{path}: neither a Gristmill dataset nor a run directory holding datasets")
    link_parents(nodes)
    summary = run_summary(path)
    run_order = [stage.get("node") for stage in summary.get("stages", [])]
    return "run", order_nodes(nodes, run_order)


def link_parents(nodes: list[DatasetNode]) -> None:
    """Parent paths in manifests are as the run wrote them; match them to this run's datasets by path, else by name."""
    by_path = {resolved(node.dataset.path): node.name for node in nodes}
    by_name = {node.name for node in nodes}
    for node in nodes:
        for parent in node.parent_paths:
            candidate = as_location(parent)
            name = by_path.get(resolved(candidate)) if candidate.exists() else None
            if name is None and candidate.name in by_name and not candidate.suffix:
                name = candidate.name
            if name is not None and name != node.name:
                node.parents.append(name)


def resolved(path: Location) -> str:
    """A comparable spelling of a location: absolute on disk, the URL itself elsewhere."""
    return str(path.resolve()) if not is_remote(path) else str(path)


def order_nodes(nodes: list[DatasetNode], run_order: list[str]) -> list[DatasetNode]:
    """Parents before children; among ready nodes, the order the run summary lists them, then by name."""
    rank = {name: index for index, name in enumerate(run_order)}
    remaining = {node.name: node for node in nodes}
    ordered: list[DatasetNode] = []
    while remaining:
        ready = [node for node in remaining.values() if all(parent not in remaining for parent in node.parents)]
        ready = ready or list(remaining.values())  # a cycle cannot happen in a real run; never loop forever
        chosen = min(ready, key=lambda node: (rank.get(node.name, len(rank)), node.name))
        ordered.append(chosen)
        del remaining[chosen.name]
    return ordered


# ---------------------------------------------------------------------------------------------------------------------
# Funnel: from shard records, checked against the ledgers


def column_sum(node: DatasetNode, column: str) -> int:
    """Sum of an integer column over every shard, reading that column only."""
    total = 0
    for path in node.shard_files():
        for batch in iter_parquet_batches(path, columns=[column]):
            total += pc.sum(batch.column(0)).as_py() or 0
    return int(total)


def count_values(array: pa.Array) -> Counter[str]:
    counts = pc.value_counts(pc.fill_null(array.cast(pa.string()), NO_VALUE))
    return Counter(dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())))


def count_ledger(node: DatasetNode) -> tuple[int, Counter[str]]:
    """Rows in the data files (from Parquet footers) and ledger rows per reason (reading the `reason` column only)."""
    rows = 0
    reasons: Counter[str] = Counter()
    for record, path in zip(node.records, node.shard_files()):
        rows += read_footer(path).num_rows
        ledger = node.dataset.reject_path(record.name)
        if ledger.exists():
            for batch in iter_parquet_batches(ledger, columns=["reason"]):
                reasons.update(count_values(batch.column(0)))
    return rows, reasons


def read_events(run_dir: Path | None) -> list[dict[str, Any]]:
    """The run's structured log, one dict per line; unreadable lines (a run killed mid-write) are skipped."""
    events_path = run_dir / EVENTS_NAME if run_dir else None
    if events_path is None or not events_path.exists():
        return []
    events = []
    with events_path.open() as handle:
        for line in handle:
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def node_wall_seconds(run_dir: Path | None, events: list[dict[str, Any]]) -> dict[str, float]:
    """Wall seconds spent on each node, summed over every run of it that the event log recorded."""
    seconds: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("event") in ("node_done", "node_failed"):
            seconds[event["node"]] += float(event.get("wall_seconds") or 0.0)
    if not seconds and run_dir is not None:
        for stage in run_summary(run_dir).get("stages", []):
            seconds[stage["node"]] = float(stage.get("wall_seconds") or 0.0)
    return seconds


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def build_funnel(nodes: list[DatasetNode], run_dir: Path | None) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per node in run order, and the list of problems found checking records against ledgers and parents."""
    by_name = {node.name: node for node in nodes}
    events = read_events(run_dir)
    wall = node_wall_seconds(run_dir, events)
    errors = Counter(event["node"] for event in events if event.get("event") == "shard_error")
    tokens_out: dict[str, int | None] = {}
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for node in nodes:
        records = node.records
        documents_in = sum(record.rows_in for record in records)
        documents_out = sum(record.documents_out for record in records)
        rows_out = sum(record.rows for record in records)
        recorded_reasons: Counter[str] = Counter()
        for record in records:
            recorded_reasons.update(record.rejected)
        rejected = sum(recorded_reasons.values())
        data_rows, ledger_reasons = count_ledger(node)
        tokens_out[node.name] = column_sum(node, "num_tokens") if node.has("num_tokens") else None
        parent_tokens = [tokens_out.get(parent) for parent in node.parents]
        known = parent_tokens and None not in parent_tokens and has_all_parents(node)
        tokens_in = sum(parent_tokens) if known else None
        task_seconds = sum(record.seconds for record in records)
        wall_seconds = wall.get(node.name) or None
        failures = sorted(path.stem for path in (node.dataset.path / FAILURES_DIR).glob("*.txt"))
        rows.append({
            "node": node.name, "stage": node.stage,
            "status": "complete" if node.complete else f"partial ({len(records)} shards done)",
            "shards": len(records),
            "documents_in": documents_in, "documents_out": documents_out, "rows_out": rows_out,
            "rejected": rejected, "kept_share": ratio(documents_out, documents_in),
            "reasons": dict(ledger_reasons.most_common()),
            "ledger_rows": sum(ledger_reasons.values()), "data_rows": data_rows,
            "text_bytes_in": sum(record.text_bytes_in for record in records),
            "text_bytes_out": sum(record.text_bytes_out for record in records),
            "tokens_in": tokens_in, "tokens_out": tokens_out[node.name],
            "task_seconds": round(task_seconds, 3), "wall_seconds": wall_seconds,
            "documents_per_second": ratio(documents_in, wall_seconds or task_seconds),
            "slowest_shard_seconds": max((record.seconds for record in records), default=0.0),
            "shard_errors": errors.get(node.name, 0), "failed_shards": failures,
        })
        problems += check_node(node, rows[-1], recorded_reasons, by_name)
    return rows, problems


def has_all_parents(node: DatasetNode) -> bool:
    """Every input of the node is a dataset of this run (not an outside dataset or an input file)."""
    return len(node.parents) == len(node.parent_paths)


def check_node(node: DatasetNode, row: dict[str, Any], recorded: Counter[str], by_name: dict[str, DatasetNode]) -> list[str]:
    """Every way the funnel of one node could disagree with its ledger, its data files or its parents."""
    problems = []
    if row["documents_in"] != row["documents_out"] + row["rejected"]:
        problems.append(f"{node.name}: {row['documents_in']:,} in != {row['documents_out']:,} out + "
                        f"{row['rejected']:,} rejected")
    if Counter(row["reasons"]) != recorded:
        problems.append(f"{node.name}: reject ledger {dict(row['reasons'])} != shard records {dict(recorded)}")
    if row["data_rows"] != row["rows_out"]:
        problems.append(f"{node.name}: data files hold {row['data_rows']:,} rows, shard records {row['rows_out']:,}")
    parents = [by_name[parent] for parent in node.parents if parent in by_name]
    if parents and has_all_parents(node) and node.complete and all(parent.complete for parent in parents):
        parent_rows = sum(record.rows for parent in parents for record in parent.records)
        if parent_rows != row["documents_in"]:
            problems.append(f"{node.name}: read {row['documents_in']:,} rows but its parents "
                            f"({', '.join(node.parents)}) hold {parent_rows:,}")
    if row["failed_shards"]:
        problems.append(f"{node.name}: failed shards {', '.join(row['failed_shards'])} (see {FAILURES_DIR}/)")
    return problems


# ---------------------------------------------------------------------------------------------------------------------
# Distributions: one pass per profiled dataset, histograms with fixed bins, counters per key


@dataclass
class Histogram:
    """Counts over fixed bins, built batch by batch, with the exact count, mean, min and max beside them."""

    edges: np.ndarray
    log: bool = False  # log-spaced edges: quantiles interpolate geometrically inside a bin
    counts: np.ndarray = field(init=False)
    total: float = 0.0
    minimum: float = float("inf")
    maximum: float = float("-inf")
    values: int = 0
    nulls: int = 0

    def __post_init__(self) -> None:
        self.counts = np.zeros(len(self.edges) - 1, np.int64)

    def add(self, array: pa.Array) -> None:
        self.nulls += array.null_count
        values = array.drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
        values = values[np.isfinite(values)]
        if not len(values):
            return
        self.values += len(values)
        self.total += float(values.sum())
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        clipped = np.clip(values, self.edges[0], self.edges[-1])
        self.counts += np.histogram(clipped, self.edges)[0]

    def quantile(self, share: float) -> float | None:
        """From the bins, interpolating inside a bin (geometrically on log bins); clamped to the exact min and max."""
        in_bins = int(self.counts.sum())
        if not in_bins:
            return None
        cumulative = np.cumsum(self.counts)
        target = share * in_bins
        index = min(int(np.searchsorted(cumulative, target)), len(self.counts) - 1)
        before = cumulative[index - 1] if index else 0
        inside = (target - before) / self.counts[index] if self.counts[index] else 0.0
        low, high = float(self.edges[index]), float(self.edges[index + 1])
        value = low * (high / low) ** inside if self.log else low + (high - low) * inside
        return float(min(max(value, self.minimum), self.maximum))

    def summary(self) -> dict[str, Any]:
        return {"values": self.values, "nulls": self.nulls,
                "mean": self.total / self.values if self.values else None,
                "min": self.minimum if self.values else None,
                "p10": self.quantile(0.1), "p50": self.quantile(0.5), "p90": self.quantile(0.9),
                "max": self.maximum if self.values else None}

    def as_dict(self) -> dict[str, Any]:
        return {**self.summary(), "edges": [round(float(edge), 6) for edge in self.edges],
                "counts": self.counts.tolist()}


@dataclass
class KeyTally:
    """Documents, text bytes and tokens per value of one column (source, domain, lang)."""

    documents: Counter[str] = field(default_factory=Counter)
    text_bytes: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)

    def add(self, keys: pa.Array, text_bytes: pa.Array | None, tokens: pa.Array | None) -> None:
        columns = {"key": pc.fill_null(keys.cast(pa.string()), NO_VALUE)}
        aggregations = [("key", "count")]
        if text_bytes is not None:
            columns["bytes"] = text_bytes
            aggregations.append(("bytes", "sum"))
        if tokens is not None:
            columns["tokens"] = tokens
            aggregations.append(("tokens", "sum"))
        grouped = pa.table(columns).group_by("key").aggregate(aggregations).to_pydict()
        keys_out = grouped["key"]
        self.documents.update(dict(zip(keys_out, grouped["key_count"])))
        if text_bytes is not None:
            self.text_bytes.update(dict(zip(keys_out, (value or 0 for value in grouped["bytes_sum"]))))
        if tokens is not None:
            self.tokens.update(dict(zip(keys_out, (value or 0 for value in grouped["tokens_sum"]))))


@dataclass
class Profile:
    """What one pass over a document dataset found: lengths, keys (source, domain, lang) and score histograms."""

    node: str
    documents: int = 0
    empty_texts: int = 0
    lengths: Histogram | None = None
    keys: dict[str, KeyTally] = field(default_factory=dict)
    scores: dict[str, Histogram] = field(default_factory=dict)


KEY_COLUMNS = ("source", "domain", "lang")


def profile_dataset(node: DatasetNode, edges: dict[str, np.ndarray], with_text: bool = True) -> Profile:
    """One pass over the dataset reading only the columns asked for, one batch at a time."""
    keys = [column for column in KEY_COLUMNS if node.has(column) and footer_statistics(node, column)[0]] \
        if with_text else []
    scores = [column for column in edges if node.has(column)]
    use_text = with_text and node.has("text")
    use_tokens = with_text and node.has("num_tokens")
    columns = keys + scores + (["text"] if use_text else []) + (["num_tokens"] if use_tokens else [])
    profile = Profile(node.name, lengths=Histogram(LENGTH_EDGES, log=True) if use_text else None)
    profile.keys = {column: KeyTally() for column in keys}
    profile.scores = {column: Histogram(edges[column]) for column in scores}
    if not columns:
        return profile
    for path in node.shard_files():
        for batch in iter_parquet_batches(path, columns=columns):
            profile.documents += batch.num_rows
            text_bytes = None
            if use_text:
                text = batch.column("text")
                lengths = pc.fill_null(pc.utf8_length(text), 0)
                empty = pc.equal(lengths, 0)
                profile.empty_texts += pc.sum(empty).as_py() or 0
                profile.lengths.add(pc.filter(lengths, pc.invert(empty)))
                text_bytes = pc.fill_null(pc.binary_length(text), 0)
            tokens = batch.column("num_tokens") if use_tokens else None
            for column in keys:
                profile.keys[column].add(batch.column(column), text_bytes, tokens)
            for column in scores:
                profile.scores[column].add(batch.column(column))
    return profile


def kept_keys(tallies: dict[str, KeyTally], keep: int = KEPT_KEYS) -> dict[str, dict[str, Any]]:
    """Each dataset's tallies of the keys in any dataset's top `keep` (so one key is in all or none) and its distinct count."""
    kept = {key for tally in tallies.values() for key, _ in tally.documents.most_common(keep)}
    return {name: {"distinct": len(tally.documents),
                   **{part: {key: count for key, count in getattr(tally, part).most_common() if key in kept}
                      for part in ("documents", "text_bytes", "tokens")}}
            for name, tally in tallies.items()}


def score_columns(nodes: list[DatasetNode]) -> list[str]:
    """Columns that hold scores: numeric and named `*_score` or `*quality`, or float32 (the type every scoring stage
    writes, whatever the user named the column)."""
    found: list[str] = []
    for node in nodes:
        for schema_field in node.schema:
            numeric = pa.types.is_floating(schema_field.type) or pa.types.is_integer(schema_field.type)
            named = schema_field.name.endswith(("_score", "quality"))
            if numeric and (named or pa.types.is_float32(schema_field.type)) and schema_field.name not in found:
                found.append(schema_field.name)
    return found


def footer_statistics(node: DatasetNode, column: str) -> tuple[bool, float, float]:
    """(has values, min, max) of a column from the Parquet footers alone; min/max are infinite when not numeric.

    A column chunk without statistics counts as having values, so a writer that skips them costs a scan, not data.
    """
    if column in node.footers:
        return node.footers[column]
    present, low, high = False, float("inf"), float("-inf")
    for path in node.shard_files():
        metadata = read_footer(path)
        for group in range(metadata.num_row_groups):
            row_group = metadata.row_group(group)
            for index in range(row_group.num_columns):
                chunk = row_group.column(index)
                if chunk.path_in_schema != column:
                    continue
                statistics = chunk.statistics
                if statistics is None or statistics.num_values > 0:
                    present = True
                if statistics is not None and statistics.has_min_max and isinstance(statistics.min, (int, float)):
                    low, high = min(low, float(statistics.min)), max(high, float(statistics.max))
    node.footers[column] = (present, low, high)
    return node.footers[column]


def read_footer(path: Location) -> pq.FileMetaData:
    """A Parquet file's footer, read once per version of the file (several sections need it). Shards are checked
    against their records before they are read, and a committed shard is never rewritten: on an object store,
    where modification times are not to be had cheaply, the size stands for the version."""
    status = path.stat()
    return _read_footer(path, 0 if is_remote(path) else status.st_mtime_ns, status.st_size)


@functools.lru_cache(maxsize=4096)
def _read_footer(path: Location, modified_ns: int, size: int) -> pq.FileMetaData:
    with open_parquet(path) as parquet:
        return parquet.metadata


def score_edges(nodes: Iterable[DatasetNode], column: str) -> np.ndarray:
    """Bins shared by every dataset's histogram of a score, over the range its values take (from the footers)."""
    low, high = float("inf"), float("-inf")
    for node in nodes:
        if node.has(column):
            _, node_low, node_high = footer_statistics(node, column)
            low, high = min(low, node_low), max(high, node_high)
    if low > high:
        low, high = 0.0, 1.0
    elif low == high:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, SCORE_BINS + 1)


def choose_profiled(nodes: list[DatasetNode]) -> tuple[DatasetNode | None, list[DatasetNode]]:
    """The run's input (its first document dataset) and outputs (document datasets no other document dataset reads)."""
    documents = [node for node in nodes if node.is_documents]
    if not documents:
        return None, []
    read_by_documents = {parent for node in documents for parent in node.parents}
    outputs = [node for node in documents if node.name not in read_by_documents]
    return documents[0], outputs


# ---------------------------------------------------------------------------------------------------------------------
# Sections stages contribute, and files other commands leave in the run


def stage_sections(nodes: list[DatasetNode]) -> tuple[list[tuple[DatasetNode, StageSection]], list[str]]:
    """Every node's sections from its stage's `report_sections` hook, and the problems met building them: a stage
    that is not loaded, or a file its hook found corrupt, is a visible warning rather than a missing section."""
    stages = registered_stages()
    sections: list[tuple[DatasetNode, StageSection]] = []
    problems: list[str] = []
    for node in nodes:
        stage = stages.get(node.stage)
        if stage is None:
            if node.stage != "?":
                problems.append(f"{node.name}: stage {node.stage!r} is not loaded (name its module with --plugin), "
                                "so its report sections are missing")
            continue
        try:
            sections += [(node, section) for section in stage.report_sections(node)]
        except StageReportError as error:
            problems.append(f"{node.name}: {error}")
    return sections, problems


def source_counts(node: DatasetNode) -> dict[str, int]:
    """Documents per source in one dataset, reading the `source` column only."""
    counts: Counter[str] = Counter()
    for path in node.shard_files():
        for batch in iter_parquet_batches(path, columns=["source"]):
            counts.update(count_values(batch.column(0)))
    return dict(counts.most_common())


def find_json_files(run_dir: Path, name: str, format_name: str,
                    problems: list[str]) -> list[tuple[Path, dict[str, Any]]]:
    """`name` files one level below the run whose `format` field is format_name (exports, mixture plans); a corrupt
    one is added to `problems`, so the report says what it could not show."""
    found = []
    for path in sorted(run_dir.glob(f"*/{name}")):
        try:
            payload = read_json(path)
        except ReportError as error:
            problems.append(str(error))
            continue
        if payload.get("format") == format_name:
            found.append((path, payload))
    return found


def tokenizer_comparison(run_dir: Path, problems: list[str]) -> dict[str, Any] | None:
    path = run_dir / TOKENIZER_EVAL_DIR / "report.json"
    if not path.exists():
        return None
    try:
        payload = read_json(path)
    except ReportError as error:
        problems.append(str(error))
        return None
    if not isinstance(payload.get("summary"), list):
        return None
    rows = [row for row in payload["summary"] if isinstance(row, dict)]
    return {"summary": rows, "html": f"{TOKENIZER_EVAL_DIR}/report.html"} if rows else None


# ---------------------------------------------------------------------------------------------------------------------
# Collecting everything


def collect_distributions(nodes: list[DatasetNode]) -> dict[str, Any]:
    """Lengths, languages, scores, sources and domains of the run's input and outputs, and where each score began."""
    first, outputs = choose_profiled(nodes)
    scores = score_columns(nodes)
    profiled = [first, *[node for node in outputs if node.name != first.name]] if first else []
    # A score's origin is the first dataset with values in it (a source may carry an empty score column).
    score_origins = {column: next((node for node in nodes if node.has(column) and footer_statistics(node, column)[0]),
                                  next(node for node in nodes if node.has(column))) for column in scores}
    edges = {column: score_edges(nodes, column) for column in scores}
    profiles: dict[str, Profile] = {}
    for column, origin in score_origins.items():
        if origin.is_documents and origin.name not in {node.name for node in profiled}:
            profiles[origin.name] = profile_dataset(origin, {column: edges[column]}, with_text=False)
    profiles |= {node.name: profile_dataset(node, edges) for node in profiled}
    origins = {column: node.name for column, node in score_origins.items()}
    return {
        "profiled": {"input": first.name if first else None, "outputs": [node.name for node in outputs],
                     "score_origins": origins},
        "lengths": {name: profile.lengths.as_dict() | {"empty": profile.empty_texts}
                    for name, profile in profiles.items() if profile.lengths is not None},
        # Each score in its origin and wherever else it has values.
        "scores": {column: {name: profile.scores[column].as_dict() for name, profile in profiles.items()
                            if column in profile.scores and (profile.scores[column].values or name == origins[column])}
                   for column in scores},
        "keys": {column: kept_keys({name: profile.keys[column] for name, profile in profiles.items()
                                    if column in profile.keys}) for column in KEY_COLUMNS},
    }


def gather(path: str | Path, top: int = 20) -> tuple[dict[str, Any], list[tuple[DatasetNode, StageSection]]]:
    """Everything the run report shows: plain data (also written as report.json) and the sections stages hand it."""
    path = as_location(path)
    kind, nodes = load_run(path)
    run_dir = path if kind == "run" else None
    # A single dataset inside a run directory still has its wall times in the run's event log.
    events_dir = run_dir or (path.parent if (path.parent / EVENTS_NAME).exists() else None)
    funnel, problems = build_funnel(nodes, events_dir)
    data: dict[str, Any] = {"kind": kind, "path": str(path), "funnel": funnel, "problems": problems}

    data |= collect_distributions(nodes)
    data["stage_counters"] = {node.name: node.stats for node in nodes if node.stats}
    data["source_funnel"] = {node.name: source_counts(node) for node in nodes if node.is_documents and node.has("source")}
    sections, section_problems = stage_sections(nodes)
    problems += section_problems
    data["stage_sections"] = [{"node": node.name, "stage": node.stage, "title": section.title,
                               "statistics": section.statistics} for node, section in sections]
    data["exports"], data["mixtures"], data["tokenizer_eval"] = {}, {}, None
    if run_dir is not None:
        data["exports"] = {str(stats_path.parent.relative_to(run_dir)): stats for stats_path, stats
                           in find_json_files(run_dir, "stats.json", TOKEN_STATS_FORMAT, problems)}
        data["mixtures"] = {str(plan_path.parent.relative_to(run_dir)): plan
                            for plan_path, plan in find_json_files(run_dir, "plan.json", PLAN_FORMAT, problems)}
        data["tokenizer_eval"] = tokenizer_comparison(run_dir, problems)
    data["top"] = top
    return data, sections


def collect(path: str | Path, top: int = 20) -> dict[str, Any]:
    """Everything the run report shows, as plain data (also written as report.json)."""
    return gather(path, top)[0]


# ---------------------------------------------------------------------------------------------------------------------
# Rendering


def megabytes(value: int | None) -> float | None:
    return None if value is None else value / 1e6


def plot_funnel(funnel: list[dict[str, Any]]) -> plt.Figure:
    names = [row["node"] for row in funnel]
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2))
    positions = np.arange(len(names))[::-1]
    axes.barh(positions, [row["documents_in"] for row in funnel], color="#c7d7ea", label="documents in")
    axes.barh(positions, [row["documents_out"] for row in funnel], height=0.5, color="#2c6fad", label="documents out")
    for position, row in zip(positions, funnel):
        axes.text(row["documents_in"], position, f" {row['documents_out']:,}", va="center", fontsize=8)
    axes.set_yticks(positions, names)
    axes.set_xlabel("documents")
    axes.legend(loc="lower right", fontsize=8)
    axes.margins(x=0.12)
    return figure


def plot_lengths(lengths: dict[str, dict[str, Any]]) -> plt.Figure:
    figure, axes = plt.subplots(figsize=(8, 3.5))
    for (name, histogram), style in zip(lengths.items(), itertools.cycle(LINE_STYLES)):
        counts = np.asarray(histogram["counts"])
        used = np.flatnonzero(counts)
        if not len(used):
            continue
        first, last = used[0], used[-1] + 1
        axes.stairs(counts[first:last], np.asarray(histogram["edges"])[first:last + 1], label=name, linewidth=1.5,
                    linestyle=style)
    axes.set_xscale("log")
    axes.set_xlabel("characters per document")
    axes.set_ylabel("documents")
    axes.legend(fontsize=8)
    return figure


def plot_scores(column: str, histograms: dict[str, dict[str, Any]]) -> plt.Figure:
    figure, axes = plt.subplots(figsize=(8, 3.2))
    for (name, histogram), style in zip(histograms.items(), itertools.cycle(LINE_STYLES)):
        axes.stairs(histogram["counts"], histogram["edges"], label=name, linewidth=1.5, linestyle=style)
    axes.set_xlabel(column)
    axes.set_ylabel("documents")
    axes.legend(fontsize=8)
    return figure


def render(data: dict[str, Any], sections: list[tuple[DatasetNode, StageSection]]) -> Report:
    title = f"Gristmill run report: {Path(data['path']).name or data['path']}"
    report = Report(title, data)
    funnel = data["funnel"]
    report.section("Funnel")
    where = f"Run {data['path']}: {len(funnel)} datasets in run order." if data["kind"] == "run" else \
        f"Dataset {data['path']}."
    report.text(f"{where} Documents and "
                "rejects come from the shard records and are checked against the reject ledgers and data files; "
                "text bytes are UTF-8 bytes of the text column; tokens are sums of num_tokens where a dataset has it.")
    report.table([{"node": row["node"], "stage": row["stage"], "shards": row["shards"],
                   "docs in": row["documents_in"], "docs out": row["documents_out"], "rejected": row["rejected"],
                   "kept": row["kept_share"], "rows out": row["rows_out"],
                   "text MB in": megabytes(row["text_bytes_in"]), "text MB out": megabytes(row["text_bytes_out"]),
                   "tokens in": row["tokens_in"], "tokens out": row["tokens_out"], "status": row["status"]}
                  for row in funnel])
    report.figure(plot_funnel(funnel), "Documents in and out of each stage")
    reasons = [{"node": row["node"], "reason": reason, "documents": count,
                "share of stage input": ratio(count, row["documents_in"])}
               for row in funnel for reason, count in row["reasons"].items()]
    report.text("Reject reasons (from the reject ledgers):")
    if reasons:
        report.table(reasons)
    else:
        report.text("No document was rejected.")
    for name, stats in data["exports"].items():
        report.text(f"Export {name}: {stats.get('document_tokens', 0):,} document tokens went in, "
                    f"{stats.get('tokens', 0):,} tokens are in bucket files, "
                    f"{stats.get('dropped_tokens', {}).get('total', 0):,} dropped "
                    f"({stats.get('dropped_tokens', {}).get('remainders', 0):,} remainders, "
                    f"{stats.get('dropped_tokens', {}).get('short_documents', 0):,} in short documents).")
    if data["problems"]:
        report.text("Checks FAILED: " + "; ".join(data["problems"]))
    else:
        report.text("Checks passed: for every stage, documents in = documents out + rejected; the ledger's reasons "
                    "equal the shard records'; the data files hold the recorded rows; each stage read what its "
                    "parents wrote.")

    render_distributions(report, data)
    render_sources(report, data)
    render_timings(report, data)
    for _, section in sections:
        section.render(report)
    render_extras(report, data)
    return report


def render_distributions(report: Report, data: dict[str, Any]) -> None:
    report.section("Distributions")
    profiled = data["profiled"]
    if profiled["input"] is None:
        report.text("No dataset of documents with a text column to profile.")
    else:
        report.text(f"Profiled datasets: input {profiled['input']}, output(s) {', '.join(profiled['outputs'])}. "
                    "Quantiles are read from the histogram bins (about 12% wide for lengths).")
    if data["lengths"]:
        report.figure(plot_lengths(data["lengths"]), "Text length (characters per document)")
        report.table([{"dataset": name, "documents": histogram["values"] + histogram["empty"],
                       "empty": histogram["empty"], "mean chars": histogram["mean"], "p10": histogram["p10"],
                       "median": histogram["p50"], "p90": histogram["p90"], "max": histogram["max"]}
                      for name, histogram in data["lengths"].items()])

    languages = data["keys"].get("lang", {})
    if languages:
        report.text("Languages: documents per language in each profiled dataset.")
        columns = {name: tally["documents"] for name, tally in languages.items()}
        labels = top_keys(columns.values(), data["top"])
        report.table([{"lang": label, **{name: counts.get(label, 0) for name, counts in columns.items()}}
                      for label in labels])
        report.figure(bar_chart(labels, {name: [counts.get(label, 0) for label in labels]
                                           for name, counts in columns.items()}, "documents", log=True),
                      "Documents per language")

    for column, histograms in data["scores"].items():
        if not histograms:
            continue
        origin = data["profiled"]["score_origins"][column]
        report.text(f"Score {column} (first written by {origin}):")
        report.figure(plot_scores(column, histograms), f"Distribution of {column}")
        report.table([{"dataset": name, **{key: histogram[key] for key in ("values", "nulls", "mean", "min", "p10",
                                                                           "p50", "p90", "max")}}
                      for name, histogram in histograms.items()])

    render_exports(report, data["exports"])


def render_exports(report: Report, exports: dict[str, dict[str, Any]]) -> None:
    """Tokens per bucket of every export's bucket files, from the stats file the export wrote."""
    for name, stats in exports.items():
        buckets = stats.get("buckets", {})
        rows = [{"bucket": int(bucket), "capacity": (1 << int(bucket)) + 1, "sequences": tally.get("sequences"),
                 "tokens": tally.get("tokens", 0), "average context": tally.get("average_context_length")}
                for bucket, tally in buckets.items()]
        total = sum(row["tokens"] for row in rows)
        for row in rows:
            row["share"] = ratio(row["tokens"], total)
        report.text(f"Bucket tokens in export {name}: {total:,} tokens.")
        report.table(rows)
        if rows:
            report.figure(bar_chart([f"D{row['bucket']} (≤{row['capacity']})" for row in rows],
                                    {"tokens": [row["tokens"] for row in rows]}, "tokens"),
                          f"Tokens per bucket (export {name})")


def top_keys(counters: Iterable[dict[str, int]], top: int) -> list[str]:
    total: Counter[str] = Counter()
    for counts in counters:
        total.update(counts)
    return [key for key, _ in total.most_common(top)]


def render_sources(report: Report, data: dict[str, Any]) -> None:
    report.section("Sources")
    render_source_funnel(report, data["source_funnel"], data["top"])
    for column, label in (("source", "source"), ("domain", "domain")):
        tallies = data["keys"].get(column, {})
        if not tallies:
            continue
        first = data["profiled"]["input"]
        outputs = [name for name in tallies if name != first]
        ranking = [tallies[name]["documents"] for name in (outputs or [first])]
        keys = top_keys(ranking, data["top"])
        rows = []
        for key in keys:
            row: dict[str, Any] = {label: key}
            if first in tallies:
                row[f"docs in ({first})"] = tallies[first]["documents"].get(key, 0)
                row[f"text MB in ({first})"] = megabytes(tallies[first]["text_bytes"].get(key, 0))
            for name in outputs:
                row[f"docs out ({name})"] = tallies[name]["documents"].get(key, 0)
                row[f"text MB out ({name})"] = megabytes(tallies[name]["text_bytes"].get(key, 0))
                if tallies[name]["tokens"]:
                    row[f"tokens ({name})"] = tallies[name]["tokens"].get(key, 0)
                if first in tallies:
                    row[f"kept ({name})"] = ratio(tallies[name]["documents"].get(key, 0),
                                                  tallies[first]["documents"].get(key, 0))
            rows.append(row)
        distinct = max(tally["distinct"] for tally in tallies.values())
        shown = f"top {len(keys)} of {distinct:,}" if distinct > len(keys) else f"all {distinct:,}"
        report.text(f"Documents and text per {label} ({shown}, ranked by output documents):")
        report.table(rows)
        if column == "source" and len(data["source_funnel"]) > 1:
            continue  # the source funnel above plots them stage by stage
        report.figure(bar_chart(keys, {name: [tally["documents"].get(key, 0) for key in keys]
                                         for name, tally in tallies.items()}, "documents"), f"Documents per {label}")
    token_sources = {f"export {name}": stats["sources"] for name, stats in data["exports"].items() if stats.get("sources")}
    for where, sources in token_sources.items():
        report.text(f"Tokens per source in {where}:")
        total = sum(sources.values())
        report.table([{"source": source, "tokens": tokens, "share": ratio(tokens, total)}
                      for source, tokens in sources.items()])
    if not (data["source_funnel"] or token_sources or any(data["keys"].get(column) for column in ("source", "domain"))):
        report.text("No dataset has a source or domain column.")


def render_source_funnel(report: Report, funnel: dict[str, dict[str, int]], top: int) -> None:
    """Documents of each source after every stage: where each source loses its documents."""
    sources = top_keys(list(funnel.values())[:1], top) if funnel else []
    if not sources:
        return
    nodes = list(funnel)
    if len(nodes) < 2:
        return
    report.text(f"Documents per source after each stage (the {len(sources)} largest sources at {nodes[0]}):")
    report.table([{"node": node, **{source: funnel[node].get(source, 0) for source in sources}} for node in nodes])
    figure, axes = plt.subplots(figsize=(8, 3.5))
    for source in sources[:10]:
        axes.plot(range(len(nodes)), [funnel[node].get(source, 0) for node in nodes], marker="o", label=source)
    axes.set_xticks(range(len(nodes)), nodes, rotation=45, ha="right")
    axes.set_ylabel("documents")
    axes.legend(fontsize=8)
    report.figure(figure, "Documents per source after each stage")


def render_timings(report: Report, data: dict[str, Any]) -> None:
    report.section("Timings")
    funnel = data["funnel"]
    report.text("Task seconds are summed over shards (they overlap when workers run in parallel); wall seconds "
                "come from the run's event log, summed over every run that did work on the stage.")
    rows = [{"node": row["node"], "shards": row["shards"], "task seconds": row["task_seconds"],
             "wall seconds": row["wall_seconds"], "slowest shard s": row["slowest_shard_seconds"],
             "docs/s": row["documents_per_second"],
             "text MB/s": ratio(megabytes(row["text_bytes_in"]), row["wall_seconds"] or row["task_seconds"]),
             "shard errors": row["shard_errors"]} for row in funnel]
    report.table(rows)
    wall = sum(row["wall_seconds"] or 0.0 for row in funnel)
    if wall:
        report.text(f"Total wall time over the stages: {wall:,.1f} s.")
    seconds = {row["node"]: row["wall_seconds"] or row["task_seconds"] for row in funnel}
    report.figure(bar_chart(list(seconds), {"seconds": list(seconds.values())}, "seconds"),
                  "Seconds per stage (wall where logged, else task)")
    counters = data["stage_counters"]
    if counters:
        report.text("Stage counters (summed over shards):")
        report.table([{"node": name, "counter": key, "value": value}
                      for name, stats in counters.items() for key, value in stats.items()])


def render_extras(report: Report, data: dict[str, Any]) -> None:
    if data["tokenizer_eval"]:
        report.section("Tokenizer comparison")
        report.text(f"Full comparison: {data['tokenizer_eval']['html']} (relative to the run directory).")
        rows = data["tokenizer_eval"]["summary"]
        columns = list(dict.fromkeys(key for row in rows for key in row))
        report.table(rows, columns)
    for name, plan in data["mixtures"].items():
        report.section(f"Mixture plan: {name}")
        report.text(f"{plan.get('tokens', 0):,} tokens in {plan.get('sequences', 0):,} sequences, seed {plan.get('seed')}.")
        report.table([{"component": component.get("name"), "budget": component.get("budget"),
                       "tokens": component.get("tokens"), "sequences": component.get("sequences"),
                       "available tokens": component.get("available_tokens"), "epochs": component.get("epochs"),
                       "max epochs": component.get("max_epochs")} for component in plan.get("components", [])])
        for component in plan.get("components", []):
            if component.get("balance"):
                render_balanced_component(report, component, data["top"])


def render_balanced_component(report: Report, component: dict[str, Any], top: int) -> None:
    """Tokens per group of a balanced mixture component, before (available) and after (planned): the largest
    `top` groups by available tokens, the rest summed as one row."""
    balance, name = component["balance"], component.get("name")
    table = balance.get("table", {})
    available = np.array(table.get("available_tokens", []), dtype=np.int64)
    planned = np.array(table.get("planned_tokens", []), dtype=np.int64)
    order = np.argsort(-available, kind="stable")
    shown, rest = order[:top], order[top:]
    labels = [NO_VALUE if table["group"][index] is None else str(table["group"][index]) for index in shown.tolist()]
    before, after = available[shown].tolist(), planned[shown].tolist()
    if len(rest):
        labels.append(f"other ({len(rest):,})")
        before.append(int(available[rest].sum()))
        after.append(int(planned[rest].sum()))
    column = balance.get("column")
    report.text(f"Component {name}: balanced by {column}, power {balance.get('power')}, at most "
                f"{balance.get('max_repeats')} repeats per sequence; {balance.get('groups', 0):,} groups, "
                f"{balance.get('clipped_groups', 0):,} held at that cap ({balance.get('clipped_tokens', 0):,} tokens "
                f"of their flattened share went to the others)."
                + (f" {NO_VALUE} is the group of null ids." if None in table.get("group", []) else ""))
    report.table([{column: label, "tokens before": first, "share before": ratio(first, int(available.sum())),
                   "tokens after": second, "share after": ratio(second, int(planned.sum()))}
                  for label, first, second in zip(labels, before, after)])
    report.figure(bar_chart(labels, {"before (available)": [ratio(value, int(available.sum())) or 0 for value in before],
                                     "after (planned)": [ratio(value, int(planned.sum())) or 0 for value in after]},
                            "share of the component's tokens"), f"Tokens per {column} of {name}, before and after")


def build_run_report(path: str | Path, top: int = 20) -> Report:
    """The run report of a run directory or one dataset directory, ready to `.write(directory)`."""
    data, sections = gather(path, top)
    return render(data, sections)


def write_run_report(path: str | Path, output: str | Path, top: int = 20) -> dict[str, Path]:
    """Build and write report.html, report.md (with figures/) and report.json into `output`; returns the paths."""
    return build_run_report(path, top).write(output)
