"""Connected components and survivor choice for deduplication, computed as tasks over partitioned Parquet files.

No task ever holds the whole graph or every document, and the result does not depend on worker count or task order.

Nodes are int64 keys `shard << 32 | row`, partitioned by shard, so a partition's documents live in a
known set of summary files. Components come from alternating large-star and small-star steps
(Kiveris et al., "Connected Components in MapReduce and Beyond", 2014), which converge to one star per
component centred on its smallest node in O(log^2 n) steps. Each cluster then keeps one member chosen
by the survivor policy (ties to the smallest document id); its cluster id is its smallest document id.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from gristmill.pipeline.engine.dataset import read_parquet_table
from gristmill.pipeline.engine.files import (
    Location,
    as_location,
    atomic_path,
    is_remote,
    remove_tree,
    write_json_atomic,
)
from gristmill.pipeline.engine.stage import BatchResult, MapStage
from gristmill.pipeline.engine.stage_report import (
    ReportedDataset,
    StageSection,
    bar_chart,
)

ROW_BITS = 32
CLUSTER_SIZES_FILE = "cluster_sizes.json"  # in `_work/<stage name>/`, read by the stage's report section
MAX_PARTITIONS = 32
SURVIVOR_PATTERN = r"^(highest:.+|longest|earliest|smallest_id)$"
REMOVAL_SCHEMA = pa.schema([("row", pa.uint32()), ("id", pa.string()), ("survivor_id", pa.string()),
                            ("cluster_id", pa.string())])
EDGE_SCHEMA = {"u": pl.Int64, "v": pl.Int64}
Runner = Callable[[Callable[[Any], Any], list[Any]], list[Any]]


def partition_count(shards: int) -> int:
    """Partitions of every reduce step: a function of the input only, never of the worker count."""
    return max(1, min(shards, MAX_PARTITIONS))


def node_keys(shard_index: int, rows: int) -> np.ndarray:
    return (np.int64(shard_index) << np.int64(ROW_BITS)) | np.arange(rows, dtype=np.int64)


def partition_of(nodes: pl.Expr, partitions: int) -> pl.Expr:
    return (nodes // (1 << ROW_BITS)) % partitions


def shards_of_partition(partition: int, summary_files: list[str | None], partitions: int) -> list[tuple[int, str]]:
    return [(shard, path) for shard, path in enumerate(summary_files)
            if path is not None and shard % partitions == partition]


def survivor_priority(batch: pa.RecordBatch | pa.Table, policy: str) -> pa.Array:
    """A float64 per row, smaller is better: the survivor policy as a sort key (missing values lose)."""
    if policy == "smallest_id":
        return pa.array(np.zeros(batch.num_rows))
    if policy == "longest":
        values = pc.negate(pc.cast(pc.utf8_length(pc.fill_null(batch.column("text"), "")), pa.float64()))
    elif policy == "earliest":
        values = pc.cast(pc.cast(batch.column("fetch_time"), pa.int64()), pa.float64())
    else:
        column = policy.removeprefix("highest:")
        if column not in batch.schema.names:
            raise ValueError(f"survivor policy {policy!r}: the input has no column {column!r}")
        values = pc.negate(pc.cast(batch.column(column), pa.float64()))
    values = pc.if_else(pc.is_nan(pc.fill_null(values, np.nan)), np.inf, values)
    return pc.fill_null(values, np.inf)


def write_parquet_atomic(frame: pl.DataFrame, path: Location) -> None:
    """Write under a hidden temporary name, then rename: a file that exists is always complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        frame.write_parquet(temporary, compression="zstd", compression_level=3)


def write_partitioned(frame: pl.DataFrame, partition: pl.Expr, directory: Location, source: str, partitions: int) -> None:
    """Split rows into `directory/part-DDDDD/SOURCE.parquet` by partition, one file per partition even if empty."""
    if partitions == 1:  # nothing to split; partition_by would cost as much as the write
        write_parquet_atomic(frame, directory / "part-00000" / f"{source}.parquet")
        return
    parts = frame.with_columns(partition.cast(pl.Int64).alias("_partition")).partition_by(
        "_partition", as_dict=True, include_key=False, maintain_order=True)
    for index in range(partitions):
        part = parts.get((index,), frame.clear())
        write_parquet_atomic(part, directory / f"part-{index:05d}" / f"{source}.parquet")


def partition_files(directory: Location, partition: int) -> list[Location]:
    return sorted((directory / f"part-{partition:05d}").glob("*.parquet"), key=str)


def read_frame(path: str | Location, columns: list[str] | None = None) -> pl.DataFrame:
    """One Parquet file as a polars frame, from disk or through fsspec."""
    location = as_location(path)
    if not is_remote(location):
        return pl.read_parquet(location, columns=columns)
    with location.open("rb") as handle:
        return pl.read_parquet(handle, columns=columns)


def read_frames(paths: list[Location], schema: dict[str, Any]) -> pl.DataFrame:
    frames = [read_frame(path) for path in paths]
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def outputs_exist(directory: Location, source: str, partitions: int) -> bool:
    return all((directory / f"part-{index:05d}" / f"{source}.parquet").exists() for index in range(partitions))


# ---- connected components -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpreadTask:
    """Step 0: undirected edges (columns a, b) into directed records (u, v) in both directions, by partition of u."""

    edges: str
    output: str
    partitions: int


def spread_edges(task: SpreadTask) -> None:
    name = as_location(task.edges).stem
    if outputs_exist(as_location(task.output), name, task.partitions):
        return
    edges = read_frame(task.edges, columns=["a", "b"])
    records = pl.concat([edges.select(u="a", v="b"), edges.select(u="b", v="a")])
    write_partitioned(records, partition_of(pl.col("u"), task.partitions), as_location(task.output), name, task.partitions)


@dataclass(frozen=True)
class StarTask:
    """One large-star or small-star step over one partition's records."""

    inputs: str
    output: str
    partition: int
    partitions: int
    large: bool


def star_step(task: StarTask) -> bool:
    """Apply the step and write its records; returns whether the input already was a set of stars."""
    records = read_frames(partition_files(as_location(task.inputs), task.partition), EDGE_SCHEMA).unique()
    per_node = records.group_by("u").agg(smallest=pl.col("v").min(), degree=pl.len())
    # A star: every node either has no smaller neighbour (a centre) or exactly one neighbour.
    is_star = per_node.filter((pl.col("smallest") < pl.col("u")) & (pl.col("degree") > 1)).height == 0
    name = f"from-{task.partition:05d}"
    if outputs_exist(as_location(task.output), name, task.partitions):
        return is_star
    per_node = per_node.with_columns(centre=pl.min_horizontal("u", "smallest"))
    if task.large:
        # Large-star: link every larger neighbour of u to the smallest node of u's neighbourhood.
        edges = (records.filter(pl.col("v") > pl.col("u")).join(per_node.select("u", "centre"), on="u")
                 .select(a="v", b="centre"))
    else:
        # Small-star: link u and its smaller neighbours to the smallest of them.
        smaller = records.filter(pl.col("v") < pl.col("u"))
        centres = smaller.group_by("u").agg(centre=pl.col("v").min())
        edges = pl.concat([
            smaller.join(centres, on="u").select(a="v", b="centre"),
            centres.select(a="u", b="centre"),
        ]).filter(pl.col("a") != pl.col("b"))
    directed = pl.concat([edges.select(u="a", v="b"), edges.select(u="b", v="a")]).unique().sort("u", "v")
    write_partitioned(directed, partition_of(pl.col("u"), task.partitions), as_location(task.output), name, task.partitions)
    return is_star


@dataclass(frozen=True)
class RootTask:
    inputs: str
    output: str
    partition: int


def assign_roots(task: RootTask) -> str:
    """From a converged star graph: every node of the partition and its component's smallest node."""
    output = as_location(task.output)
    if not output.exists():
        records = read_frames(partition_files(as_location(task.inputs), task.partition), EDGE_SCHEMA)
        roots = (records.group_by("u").agg(pl.col("v").min()).select(node="u", root=pl.min_horizontal("u", "v"))
                 .sort("node"))
        write_parquet_atomic(roots, output)
    return task.output


def connected_components(edge_files: list[str], directory: Location, partitions: int, run: Runner) -> list[str]:
    """Label every node of the undirected graph with its component's smallest node, as tasks.

    Returns one (node, root) file per partition. Each finished step leaves a marker, so a rerun after
    a crash resumes at the last finished step; the step before it is then deleted to bound disk use.
    """
    def step_dir(step: int) -> Location:
        return directory / f"step-{step:03d}"

    def marker(step: int) -> Location:
        return directory / f"step-{step:03d}.json"

    directory.mkdir(parents=True, exist_ok=True)
    if not marker(0).exists():
        run(spread_edges, [SpreadTask(path, str(step_dir(0)), partitions) for path in edge_files])
        write_json_atomic(marker(0), json.dumps({"star": False}))
    step = 1
    while True:
        if marker(step).exists():
            is_star = json.loads(marker(step).read_text())["star"]
        else:
            tasks = [StarTask(str(step_dir(step - 1)), str(step_dir(step)), partition, partitions, step % 2 == 1)
                     for partition in range(partitions)]
            is_star = all(run(star_step, tasks))
            write_json_atomic(marker(step), json.dumps({"star": is_star}))
        if step >= 2 and step_dir(step - 2).exists():
            remove_tree(step_dir(step - 2))
        # A star graph is a fixed point of large-star, so that step's input is the final graph.
        if is_star and step % 2 == 1:
            break
        step += 1
    final = step_dir(step - 1)
    return run(assign_roots, [RootTask(str(final), str(directory / "roots" / f"part-{partition:05d}.parquet"), partition)
                              for partition in range(partitions)])


# ---- survivors and removal lists ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MembersTask:
    """Attach each node's document id and survivor priority to its (node, root) pair, partitioned by root."""

    roots: str
    summary_files: tuple[str | None, ...]
    output: str
    partition: int
    partitions: int


def gather_members(task: MembersTask) -> None:
    name = f"from-{task.partition:05d}"
    if outputs_exist(as_location(task.output), name, task.partitions):
        return
    roots = read_frame(task.roots)
    documents = [summary_documents(shard, path)
                 for shard, path in shards_of_partition(task.partition, list(task.summary_files), task.partitions)]
    documents = pl.concat(documents) if documents else pl.DataFrame(schema=DOCUMENT_KEYS)
    members = roots.join(documents, on="node").select(cluster="root", node="node", id="id", priority="priority")
    write_partitioned(members, partition_of(pl.col("cluster"), task.partitions), as_location(task.output), name,
                      task.partitions)


DOCUMENT_KEYS = {"node": pl.Int64, "id": pl.String, "priority": pl.Float64}


def summary_documents(shard: int, path: str, columns: tuple[str, ...] = ()) -> pl.DataFrame:
    """A summary file's (node, id, priority) plus any extra columns; row order is the shard's row order."""
    table = read_parquet_table(path, columns=["id", "priority", *columns])
    frame = pl.from_arrow(table)
    return frame.with_columns(node=pl.Series(node_keys(shard, table.num_rows))).select("node", "id", "priority",
                                                                                        *columns)


@dataclass(frozen=True)
class ChooseTask:
    """Pick each cluster's survivor among one partition's members (columns: cluster key(s), node, id, priority)."""

    members: str
    cluster_columns: tuple[str, ...]
    output: str
    partition: int
    partitions: int


def choose_survivors(task: ChooseTask) -> dict[int, int]:
    """Write every non-survivor with its survivor and cluster id; returns {cluster size: clusters}."""
    keys = list(task.cluster_columns)
    members = read_frames(partition_files(as_location(task.members), task.partition), {})
    if members.height == 0:
        members = pl.DataFrame(schema={key: pl.Int64 for key in keys} | DOCUMENT_KEYS)
    ranked = (members.sort([*keys, "priority", "id", "node"])
              .with_columns(survivor_id=pl.col("id").first().over(keys), cluster_id=pl.col("id").min().over(keys),
                            size=pl.len().over(keys), rank=pl.int_range(pl.len()).over(keys))
              .filter(pl.col("size") > 1))
    sizes = ranked.filter(pl.col("rank") == 0).group_by("size").len()
    removed = ranked.filter(pl.col("rank") > 0).select("node", "id", "survivor_id", "cluster_id")
    name = f"from-{task.partition:05d}"
    if not outputs_exist(as_location(task.output), name, task.partitions):
        write_partitioned(removed, partition_of(pl.col("node"), task.partitions), as_location(task.output), name,
                          task.partitions)
    return dict(zip(sizes["size"].to_list(), sizes["len"].to_list()))


@dataclass(frozen=True)
class CollectTask:
    chosen: str
    shard: int
    output: str
    partitions: int


def collect_removals(task: CollectTask) -> None:
    """One shard's removal list (row, id, survivor_id, cluster_id), in row order, for its process task."""
    output = as_location(task.output)
    if output.exists():
        return
    chosen = read_frames(partition_files(as_location(task.chosen), task.shard % task.partitions),
                         {"node": pl.Int64, "id": pl.String, "survivor_id": pl.String, "cluster_id": pl.String})
    mine = (chosen.filter(pl.col("node") // (1 << ROW_BITS) == task.shard)
            .select(row=(pl.col("node") % (1 << ROW_BITS)).cast(pl.UInt32), id="id", survivor_id="survivor_id",
                    cluster_id="cluster_id")
            .sort("row"))
    write_parquet_atomic(mine, output)


def remove_non_survivors(
    members_dir: Location, cluster_columns: tuple[str, ...], directory: Location, shard_names: list[str],
    partitions: int, run: Runner,
) -> dict[str, Any]:
    """From members partitioned by cluster to per-shard removal lists and `cluster_sizes.json`; returns the stats."""
    chosen = directory / "chosen"
    histograms = run(choose_survivors, [ChooseTask(str(members_dir), cluster_columns, str(chosen), partition,
                                                   partitions) for partition in range(partitions)])
    run(collect_removals, [CollectTask(str(chosen), shard, str(removal_path(directory, name)), partitions)
                           for shard, name in enumerate(shard_names)])
    sizes: Counter[int] = Counter()
    for histogram in histograms:
        sizes.update(histogram)
    stats = cluster_statistics(sizes)
    write_json_atomic(directory / CLUSTER_SIZES_FILE, json.dumps(stats, indent=2))
    return stats


def cluster_statistics(sizes: Counter[int]) -> dict[str, Any]:
    """Clusters, documents in them, documents removed, the largest and the count of clusters per size."""
    return {
        "clusters": sum(sizes.values()),
        "documents_in_clusters": sum(size * count for size, count in sizes.items()),
        "removed": sum((size - 1) * count for size, count in sizes.items()),
        "largest": max(sizes, default=0),
        "sizes": {str(size): sizes[size] for size in sorted(sizes)},
    }


def removal_path(directory: Location, shard_name: str) -> Location:
    return directory / "removals" / f"{shard_name}.parquet"


class RemovesClusterMembers(MapStage):
    """A dedup stage whose reduce wrote, per shard, the rows that lose to their cluster's survivor (see
    `remove_non_survivors`); each shard rejects those rows with `removal_reason` and the survivor's id."""

    removal_reason: ClassVar[str]

    def bind(self, global_view: str, shard_name: str) -> None:
        super().bind(global_view, shard_name)
        path = removal_path(as_location(global_view), shard_name)
        self.removals = read_parquet_table(path) if path.exists() else REMOVAL_SCHEMA.empty_table()
        self.next_row = 0

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        rows = self.removals.column("row").to_numpy().astype(np.int64) - self.next_row
        self.next_row += batch.num_rows
        inside = (rows >= 0) & (rows < batch.num_rows)
        reasons = np.full(batch.num_rows, None, object)
        details = np.full(batch.num_rows, None, object)
        reasons[rows[inside]] = self.removal_reason
        details[rows[inside]] = np.asarray(self.removals.column("survivor_id").to_pylist(), object)[inside]
        return BatchResult.split(batch, pa.array(reasons, pa.string()), pa.array(details, pa.string()))

    @classmethod
    def survivor_in_detail(cls, detail: str) -> str:
        """The survivor's id in the ledger detail of a removed row: the whole detail, unless a stage writes more."""
        return detail

    @classmethod
    def report_sections(cls, dataset: ReportedDataset) -> list[StageSection]:
        """Cluster sizes from the reduce's `cluster_sizes.json`, else (a partial dataset) rebuilt from the ledger."""
        statistics = (recorded_cluster_sizes(cls.name, dataset)
                      or ledger_cluster_sizes(cls.removal_reason, dataset, cls.survivor_in_detail))
        if not statistics["clusters"]:
            return []
        section = StageSection(f"Duplicate clusters: {dataset.name}", statistics)
        section.text(f"{statistics['clusters']:,} clusters holding {statistics['documents_in_clusters']:,} documents, "
                     f"{statistics['removed']:,} removed, largest {statistics['largest']:,} "
                     f"(from {statistics['from']}).")
        clusters, documents = Counter(), Counter()
        for size, count in statistics["sizes"].items():
            clusters[size_bin(int(size))] += count
            documents[size_bin(int(size))] += count * int(size)
        labels = list(clusters)  # sizes are sorted, so their bins are too

        def draw():
            figure = bar_chart(labels, {"clusters": [clusters[label] for label in labels]}, "clusters",
                               log=max(clusters.values()) > 1000)
            figure.axes[0].set_ylabel("cluster size (documents)")
            return figure

        section.figure(draw, f"Duplicate cluster sizes ({dataset.name})")
        section.table([{"cluster size": label, "clusters": clusters[label], "documents": documents[label]}
                       for label in labels])
        return [section]


def recorded_cluster_sizes(stage_name: str, dataset: ReportedDataset) -> dict[str, Any] | None:
    """What the reduce recorded, or None where it has not run; a corrupt file is a StageReportError naming it."""
    path = dataset.work_dir / stage_name / CLUSTER_SIZES_FILE
    if not path.exists():
        return None
    return {**dataset.read_json(path), "from": str(path.relative_to(dataset.dataset.path))}


def ledger_cluster_sizes(removal_reason: str, dataset: ReportedDataset,
                         survivor_in_detail: Callable[[str], str] = str) -> dict[str, Any]:
    """Cluster sizes rebuilt from the reject ledger, whose detail names each removed document's survivor."""
    removed_per_survivor: Counter[str] = Counter()
    if any(removal_reason in record.rejected for record in dataset.records):
        for batch in dataset.ledger_batches(["reason", "detail"]):
            removed = pc.fill_null(pc.equal(batch.column("reason"), removal_reason), False)
            removed_per_survivor.update(map(survivor_in_detail, pc.filter(batch.column("detail"), removed).to_pylist()))
    return {**cluster_statistics(Counter(count + 1 for count in removed_per_survivor.values())), "from": "reject ledger"}


def size_bin(size: int) -> str:
    """Cluster sizes 2, 3 and 4 as they are, larger ones in power-of-two ranges (5-8, 9-16, ...)."""
    if size <= 4:
        return str(size)
    upper = 1 << (size - 1).bit_length()
    return f"{upper // 2 + 1}-{upper}"
