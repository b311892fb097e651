"""`semantic_dedup`: SemDeDup (Abbas et al., 2023): documents whose embeddings point the same way are one duplicate
group, looked for within k-means clusters, and one member of each group survives.

Centroids are trained with faiss on a sample chosen by id hash; every document goes to its nearest centroid; pairs of
one cluster are screened in float32 blocks and decided in exact arithmetic, so the result depends on the seed alone.

Reduce layout under `_work/semantic_dedup/`: `sample/shard-S.parquet` (sample key, id, embedding) and the trained
`centroids.npy` with `kmeans.json`; `assignments/<shard>.parquet` (each row's cluster) and
`clusters/part-P/shard-S.parquet` (cluster, node, embedding; cluster % partitions = P); per partition
`edges/part-P.parquet` (a star per duplicate group), `cosines/` (each grouped node's highest cosine) and
`pairs/part-P.json`; then near-dedup's `components/`, `members/`, `chosen/`, `removals/` and `cluster_sizes.json`;
`details/<shard>.parquet` (row, survivor id, cosine) that each process task reads; `semantic_dedup.json`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from pydantic import Field
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as graph_components

from gristmill.pipeline.engine.dataset import (
    Dataset,
    iter_parquet_batches,
    open_parquet,
    read_parquet_schema,
    read_parquet_table,
)
from gristmill.pipeline.engine.files import Location, as_location, atomic_path, write_json_atomic
from gristmill.pipeline.engine.stage import BatchResult, ReduceContext, Resources, StageConfig, register
from gristmill.pipeline.engine.stage_report import ReportedDataset, StageReportError, StageSection
from gristmill.stages.dedup.components import (
    ROW_BITS,
    SURVIVOR_PATTERN,
    MembersTask,
    RemovesClusterMembers,
    connected_components,
    gather_members,
    node_keys,
    partition_count,
    partition_files,
    partition_of,
    read_frame,
    read_frames,
    remove_non_survivors,
    removal_path,
    survivor_priority,
    write_parquet_atomic,
    write_partitioned,
)

CLUSTER_COLUMN = "semantic_cluster"
CLUSTER_TYPE = pa.int32()
REASON = "semantic_duplicate"
WORK_NAME = "semantic_dedup"
RECORD_FILE = "semantic_dedup.json"  # in `_work/semantic_dedup/`, read by the report section
DOCUMENTS_PER_CLUSTER = 10_000  # the default k is one cluster per this many embedded documents
SAMPLE_PER_CLUSTER = 100  # the default training sample: this many documents per centroid...
MIN_SAMPLE = 50_000  # ...and at least this many (or every embedded document, if fewer)
NORM_TOLERANCE = 0.02  # embeddings must be L2-normalised within this (float16 storage leaves about 3e-4)
GROUP_DOCUMENTS = 200_000  # a pairs task reads the clusters of its partition this many documents at a time
MEMBER_ROW_GROUP = 4_096  # rows per row group of the cluster files, so a range of clusters is read alone
EXACT_CHUNK = 8_192  # candidate pairs converted to float64 at a time
EDGES = {"a": pl.Int64, "b": pl.Int64}
COSINES = {"node": pl.Int64, "cosine": pl.Float64}
UNIT = 2.0 ** -24  # float32 unit roundoff


class SemanticDedupConfig(StageConfig):
    threshold: float = Field(0.9, gt=0, le=1,
                             description="Cosine similarity at or above which two documents of one k-means cluster are duplicates.")
    embedding_column: str = Field("embedding", min_length=1,
                                  description="Column of L2-normalised embeddings, fixed_size_list<float16, DIM>; a null row is kept and not clustered.")
    clusters: int | None = Field(None, ge=1, le=1_000_000,
                                 description=f"k of k-means (default: one per {DOCUMENTS_PER_CLUSTER:,} embedded documents).")
    sample_size: int | None = Field(None, ge=1,
                                    description=f"Documents to train the centroids on, chosen by id hash (default: {SAMPLE_PER_CLUSTER} per cluster, at least {MIN_SAMPLE:,}).")
    iterations: int = Field(20, ge=1, le=1000, description="k-means iterations.")
    seed: int = Field(0, ge=0, lt=2 ** 31, description="Seed of the training sample and of the k-means initialisation.")
    survivor: str = Field("smallest_id", pattern=SURVIVOR_PATTERN,
                          description="Which group member survives: highest:<column>, longest, earliest or smallest_id; ties go to the smallest id.")
    block_mb: int = Field(64, ge=1, le=65_536,
                          description="Memory for one block of similarities (and of distances to centroids), in MiB.")


def default_clusters(documents: int) -> int:
    return max(1, math.ceil(documents / DOCUMENTS_PER_CLUSTER))


def training_sample_size(config: SemanticDedupConfig, documents: int) -> int:
    """How many documents the sample should hold, from the documents of the input (embedded or not)."""
    if config.sample_size is not None:
        return config.sample_size
    return max(MIN_SAMPLE, SAMPLE_PER_CLUSTER * (config.clusters or default_clusters(documents)))


def sample_cutoff(wanted: int, documents: int) -> int:
    """Documents whose sample key is below this form the sample: `wanted` of `documents` in expectation."""
    if documents <= wanted:
        return 2 ** 64
    return int(wanted * 2 ** 64 // documents)


def below_cutoff(keys: np.ndarray, cutoff: int) -> np.ndarray:
    return keys < np.uint64(cutoff) if cutoff < 2 ** 64 else np.ones(len(keys), bool)


def sample_keys(ids: list[str], seed: int) -> np.ndarray:
    """A uint64 per document id, the same wherever the document sits, so the sample ignores sharding."""
    return np.fromiter((xxhash.xxh3_64_intdigest(value.encode(), seed) for value in ids), np.uint64, len(ids))


# ---- embeddings and exact arithmetic --------------------------------------------------------------------------
#
# Every float16 value is a multiple of 2^-24. For vectors of norm at most ~1, a product of two components is a multiple
# of 2^-48, and every partial sum of a dot product is a multiple of 2^-48 smaller than 2, which float64 holds exactly
# (49 significant bits). So a float64 dot product of float16 vectors is exact whatever the order of its additions, the
# BLAS, the threads or the machine. Cosines are then one IEEE rounding each of a product, a square root and a division.
# Screening in float32 is only a filter, with a margin above its worst-case rounding error.


def check_embedding_field(schema: pa.Schema, column: str) -> int:
    """The embedding dimension; a ValueError naming `embedding_column` when the column is missing or not float16."""
    if column not in schema.names:
        raise ValueError(f"embedding_column: the input has no column {column!r} (columns: {', '.join(schema.names)})")
    kind = schema.field(column).type
    if not (pa.types.is_fixed_size_list(kind) and kind.value_type == pa.float16()):
        raise ValueError(f"embedding_column: column {column!r} is {kind}, not fixed_size_list<float16, DIM>")
    return kind.list_size


def embedding_rows(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """The non-null rows of a fixed-size-list float16 column as an (n, dim) float16 matrix, and the valid-row mask."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    valid = np.asarray(pc.is_valid(array), bool) if array.null_count else np.ones(len(array), bool)
    present = array.filter(pa.array(valid)) if array.null_count else array
    values = present.flatten().to_numpy(zero_copy_only=False)
    return values.astype(np.float16, copy=False).reshape(len(present), array.type.list_size), valid


def check_normalised(matrix: np.ndarray, ids: pa.Array, column: str) -> None:
    """A ValueError naming `embedding_column` and the first document whose embedding is not of unit length."""
    squared = np.einsum("ij,ij->i", matrix.astype(np.float32), matrix.astype(np.float32))
    bad = ~((squared >= (1 - NORM_TOLERANCE) ** 2) & (squared <= (1 + NORM_TOLERANCE) ** 2))
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(f"embedding_column: {column!r} must be L2-normalised; document {ids[first].as_py()!r} has "
                         f"norm {math.sqrt(float(squared[first])):.4g}")


def screening_margin(dimension: int) -> float:
    """Above twice the worst-case float32 error of a dot product of unit vectors of this dimension."""
    return 8 * (dimension + 4) * UNIT


def exact_squares(matrix: np.ndarray) -> np.ndarray:
    """Exact squared norms of float16 rows, as float64."""
    squares = np.empty(len(matrix))
    for start in range(0, len(matrix), EXACT_CHUNK):
        rows = matrix[start:start + EXACT_CHUNK].astype(np.float64)
        squares[start:start + EXACT_CHUNK] = np.einsum("ij,ij->i", rows, rows)
    return squares


def exact_cosines(matrix: np.ndarray, squares: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The cosine of each pair of rows (left[i], right[i]), from exact dot products; at most 1."""
    cosines = np.empty(len(left))
    for start in range(0, len(left), EXACT_CHUNK):
        a, b = left[start:start + EXACT_CHUNK], right[start:start + EXACT_CHUNK]
        dots = np.einsum("ij,ij->i", matrix[a].astype(np.float64), matrix[b].astype(np.float64))
        cosines[start:start + EXACT_CHUNK] = dots / np.sqrt(squares[a] * squares[b])
    return np.minimum(cosines, 1.0)


def nearest_centroids(matrix: np.ndarray, centroids: np.ndarray, block_bytes: int) -> np.ndarray:
    """Each row's nearest centroid (Euclidean, float16 rows and centroids), exactly; ties go to the smaller index.

    The nearest centroid maximises x.c - |c|^2/2. float32 scores pick it unless another centroid comes within the
    screening margin; those rows are decided on exact scores 2 x.c - |c|^2 (all multiples of 2^-48 below 4)."""
    count, dimension = matrix.shape
    chosen = np.empty(count, np.int32)
    if not count:
        return chosen
    floats = centroids.astype(np.float32)
    halves = np.float32(0.5) * np.einsum("ij,ij->i", floats, floats)
    exact_centroids = centroids.astype(np.float64)
    exact_squared = np.einsum("ij,ij->i", exact_centroids, exact_centroids)
    margin = np.float32(2 * screening_margin(dimension))
    rows_per_block = max(1, min(4_096, block_bytes // (4 * len(centroids))))
    for start in range(0, count, rows_per_block):
        rows = matrix[start:start + rows_per_block]
        scores = rows.astype(np.float32) @ floats.T - halves
        best = scores.max(axis=1)
        near = scores >= (best - margin)[:, None]
        choice = scores.argmax(axis=1).astype(np.int32)
        unsure = np.nonzero(near.sum(axis=1) > 1)[0]
        if len(unsure):
            row, centre = np.nonzero(near[unsure])
            exact = 2 * np.einsum("ij,ij->i", rows[unsure[row]].astype(np.float64), exact_centroids[centre]) \
                - exact_squared[centre]
            order = np.lexsort((centre, -exact, row))  # per row: the highest exact score, then the smallest index
            first = np.ones(len(order), bool)
            first[1:] = row[order][1:] != row[order][:-1]
            choice[unsure[row[order][first]]] = centre[order][first]
        chosen[start:start + rows_per_block] = choice
    return chosen


@dataclass
class ClusterDuplicates:
    """Duplicate groups of one k-means cluster, over its rows in order."""

    centres: np.ndarray  # a star per group: each member but the first (smallest row)...
    members: np.ndarray  # ...linked to the first
    cosines: np.ndarray  # per row: the highest cosine to another row at or above the threshold; NaN if none
    candidates: int = 0  # pairs screened through to the exact check
    pairs: int = 0  # pairs at or above the threshold


def star_edges(size: int, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The groups of an undirected graph as stars: every member linked to the group's smallest node."""
    graph = coo_matrix((np.ones(len(left), np.int8), (left, right)), shape=(size, size)).tocsr()
    _, labels = graph_components(graph, directed=False)
    first = np.full(labels.max() + 1, size, np.int64)
    np.minimum.at(first, labels, np.arange(size))
    centres = first[labels]
    members = np.nonzero(centres != np.arange(size))[0]
    return centres[members], members


def find_duplicates(matrix: np.ndarray, threshold: float, block_bytes: int) -> ClusterDuplicates:
    """All pairs of rows at or above the threshold, grouped by connected components, in blocks of rows.

    Memory: the rows (float16) and a float32 copy, 6 bytes x dimension per row, plus one block of similarities of at
    most `block_bytes`, whatever the cluster size; the pairs found so far are folded into stars whenever they
    outnumber the rows, so they stay under 3 x rows. Time grows with the square of the rows."""
    size, dimension = matrix.shape
    result = ClusterDuplicates(np.empty(0, np.int64), np.empty(0, np.int64), np.full(size, np.nan))
    if size < 2:
        return result
    squares = exact_squares(matrix)
    unit = matrix.astype(np.float32) / np.sqrt(squares).astype(np.float32)[:, None]
    floor = np.float32(threshold - screening_margin(dimension))
    rows_per_block = max(1, min(size, 4_096, block_bytes // (4 * size)))
    left_parts: list[np.ndarray] = []
    right_parts: list[np.ndarray] = []
    held = 0
    upper = np.triu(np.ones((rows_per_block, rows_per_block), bool), 1)
    for start in range(0, size - 1, rows_per_block):
        stop = min(size, start + rows_per_block)
        similarity = unit[start:stop] @ unit[start:].T
        above = similarity >= floor
        above[:, :stop - start] &= upper[:stop - start, :stop - start]  # each pair once, never a row with itself
        row, column = np.nonzero(above)
        del similarity, above
        left, right = row + start, column + start
        cosines = exact_cosines(matrix, squares, left, right)
        kept = cosines >= threshold
        left, right, cosines = left[kept], right[kept], cosines[kept]
        result.candidates += len(kept)
        result.pairs += len(left)
        np.fmax.at(result.cosines, left, cosines)
        np.fmax.at(result.cosines, right, cosines)
        left_parts.append(left)
        right_parts.append(right)
        held += len(left)
        if held > size:  # fold what is held into stars: as connected, and fewer than the rows
            centres, members = star_edges(size, np.concatenate(left_parts), np.concatenate(right_parts))
            left_parts, right_parts, held = [centres], [members], len(members)
    if held:
        result.centres, result.members = star_edges(size, np.concatenate(left_parts), np.concatenate(right_parts))
    return result


# ---- training --------------------------------------------------------------------------------------------------


def train_centroids(sample: np.ndarray, clusters: int, iterations: int, seed: int) -> tuple[np.ndarray, float]:
    """k-means centroids (float16) of the sample rows, in the order given, and faiss's final objective.

    faiss gives the same centroids with any number of OpenMP threads: each thread sums the points of its own
    centroids, in point order (measured in docs/SEMANTIC_DEDUP.md; sklearn's lloyd does not)."""
    import faiss

    points = np.ascontiguousarray(sample, np.float32)
    kmeans = faiss.Kmeans(points.shape[1], clusters, niter=iterations, seed=seed, verbose=False,
                          max_points_per_centroid=max(1, len(points)), min_points_per_centroid=1)
    kmeans.train(points)
    objective = float(kmeans.obj[-1]) if len(kmeans.obj) else 0.0
    return kmeans.centroids.astype(np.float16), objective


def read_sample(paths: list[Location]) -> tuple[np.ndarray, int]:
    """Every sample file's rows in (key, id) order, so the order ignores sharding; and the embedded documents."""
    tables = [read_parquet_table(path) for path in paths]
    embedded = sum(int(read_parquet_schema(path).metadata[b"embedded"]) for path in paths)
    if not tables or not sum(table.num_rows for table in tables):
        return np.empty((0, 0), np.float16), embedded
    table = pa.concat_tables(tables)
    order = np.lexsort((np.asarray(table.column("id").to_pylist(), object).astype(str),
                        table.column("key").to_numpy()))
    matrix, _ = embedding_rows(table.column("embedding").take(pa.array(order)))
    return matrix, embedded


# ---- the stage -------------------------------------------------------------------------------------------------


@register
class SemanticDedup(RemovesClusterMembers):
    """Remove semantic duplicates (SemDeDup): documents whose embeddings' cosine reaches the threshold within a
    k-means cluster; one survivor per group; adds each document's k-means cluster as `semantic_cluster`."""

    name = "semantic_dedup"
    removal_reason = REASON
    Config = SemanticDedupConfig
    needs_global_view = True
    resources = Resources(cpus=1, memory_gb=2)

    def setup(self) -> None:
        if importlib.util.find_spec("faiss") is None:
            raise ValueError("semantic_dedup needs faiss for k-means: pip install faiss-cpu")

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        check_embedding_field(input_schema, self.config.embedding_column)
        column = pa.field(CLUSTER_COLUMN, CLUSTER_TYPE)
        if CLUSTER_COLUMN in input_schema.names:  # an earlier semantic_dedup's clusters are replaced
            return input_schema.set(input_schema.get_field_index(CLUSTER_COLUMN), column)
        return input_schema.append(column)

    def summarize(self, batch: pa.RecordBatch) -> pa.Table:
        """Per document: id, survivor priority and the embedding (null rows stay, so rows keep their place)."""
        column = self.config.embedding_column
        check_embedding_field(batch.schema, column)
        embeddings = batch.column(column)
        matrix, valid = embedding_rows(embeddings)
        ids = pc.cast(batch.column("id"), pa.string())
        check_normalised(matrix, pc.filter(ids, pa.array(valid)), column)
        return pa.table({"id": ids, "priority": survivor_priority(batch, self.config.survivor),
                         "embedding": embeddings})

    def reduce(self, context: ReduceContext) -> str:
        config = self.config
        directory = context.work_dir / WORK_NAME
        summaries = tuple(None if path is None else str(path) for path in context.summary_files)
        partitions = partition_count(len(summaries))
        present = [(shard, path) for shard, path in enumerate(summaries) if path is not None]
        started = time.perf_counter()

        documents = sum(context.run(count_rows, [path for _, path in present]))
        cutoff = sample_cutoff(training_sample_size(config, documents), documents)
        sample_files = [str(directory / "sample" / f"shard-{shard:05d}.parquet") for shard, _ in present]
        context.run(sample_shard, [SampleTask(path, output, cutoff, config.seed)
                                   for (_, path), output in zip(present, sample_files)])
        kmeans = fit_centroids(directory, sample_files, config, documents)

        centroids = str(directory / "centroids.npy")
        context.run(assign_shard, [AssignTask(path, shard, context.shard_names[shard], centroids, str(directory),
                                              partitions, config.block_mb << 20) for shard, path in present])
        pair_stats = context.run(group_partition, [PairsTask(str(directory), partition, partitions, config.threshold,
                                                             config.block_mb << 20) for partition in range(partitions)])
        edge_files = [str(directory / "edges" / f"part-{partition:05d}.parquet") for partition in range(partitions)]
        roots = connected_components(edge_files, directory / "components", partitions, context.run)
        context.run(gather_members, [MembersTask(path, summaries, str(directory / "members"), partition, partitions)
                                     for partition, path in enumerate(roots)])
        groups = remove_non_survivors(directory / "members", ("cluster",), directory, context.shard_names, partitions,
                                      context.run)
        context.run(write_details, [DetailsTask(str(directory), shard, name, partitions)
                                    for shard, name in enumerate(context.shard_names)])
        sizes = sorted(size for stats in pair_stats for size in stats["sizes"])
        record = {
            **kmeans, "threshold": config.threshold, "survivor": config.survivor,
            "cluster_sizes": {"clusters_with_documents": len(sizes), "largest": sizes[-1] if sizes else 0,
                              "median": sizes[len(sizes) // 2] if sizes else 0},
            "pairs_compared": sum(size * (size - 1) // 2 for size in sizes),
            "pairs_checked_exactly": sum(stats["candidates"] for stats in pair_stats),
            "pairs_at_threshold": sum(stats["pairs"] for stats in pair_stats),
            "groups": groups["clusters"], "removed": groups["removed"],
            "reduce_seconds": round(time.perf_counter() - started, 3),
        }
        write_json_atomic(directory / RECORD_FILE, json.dumps(record, indent=2))
        return str(directory)

    def bind(self, global_view: str, shard_name: str) -> None:
        super(RemovesClusterMembers, self).bind(global_view, shard_name)
        directory = as_location(global_view)
        assignments = directory / "assignments" / f"{shard_name}.parquet"
        self.assignments = (read_parquet_table(assignments).column(CLUSTER_COLUMN).combine_chunks()
                            if assignments.exists() else pa.array([], CLUSTER_TYPE))
        details = read_frame(directory / "details" / f"{shard_name}.parquet")
        self.detail_rows = details["row"].to_numpy().astype(np.int64)
        self.details = np.asarray([f"survivor={survivor} cosine={cosine:.4f}" for survivor, cosine
                                   in zip(details["survivor_id"].to_list(), details["cosine"].to_list())], object)
        self.next_row = 0

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        start, count = self.next_row, batch.num_rows
        self.next_row += count
        clusters = (self.assignments.slice(start, count) if len(self.assignments) >= start + count
                    else pa.nulls(count, CLUSTER_TYPE))
        schema = self.output_schema(batch.schema)
        columns = [batch.column(name) for name in batch.schema.names if name != CLUSTER_COLUMN]
        columns.insert(schema.get_field_index(CLUSTER_COLUMN), clusters)
        annotated = pa.RecordBatch.from_arrays(columns, schema=schema)
        rows = self.detail_rows - start
        inside = (rows >= 0) & (rows < count)
        reasons = np.full(count, None, object)
        details = np.full(count, None, object)
        reasons[rows[inside]] = REASON
        details[rows[inside]] = self.details[inside]
        return BatchResult.split(annotated, pa.array(reasons, pa.string()), pa.array(details, pa.string()))

    @classmethod
    def survivor_in_detail(cls, detail: str) -> str:
        return detail.rpartition(" cosine=")[0].removeprefix("survivor=")

    @classmethod
    def report_sections(cls, dataset: ReportedDataset) -> list[StageSection]:
        """The duplicate groups' sizes (as near-dedup's), then the k-means clusters, pair counts and a few removed
        documents beside their survivors."""
        sections = super().report_sections(dataset)
        path = dataset.work_dir / WORK_NAME / RECORD_FILE
        record = dataset.read_json(path) if path.exists() else None
        examples = removed_examples(dataset, 5)
        if record is None and not examples:
            return sections
        section = StageSection(f"Semantic duplicates: {dataset.name}", {"reduce": record, "examples": examples})
        if record is not None:
            section.text(
                f"k-means: {record['clusters']:,} clusters trained on {record['sample_documents']:,} of "
                f"{record['embedded_documents']:,} embedded documents (seed {record['seed']}, "
                f"{record['iterations']} iterations); largest cluster {record['cluster_sizes']['largest']:,}, "
                f"median {record['cluster_sizes']['median']:,}. {record['pairs_compared']:,} pairs compared, "
                f"{record['pairs_checked_exactly']:,} checked exactly, {record['pairs_at_threshold']:,} at cosine "
                f">= {record['threshold']}; {record['removed']:,} documents removed from {record['groups']:,} groups.")
        if examples:
            section.text("The first documents removed, with their highest cosine within their group:")
            section.table([{"cosine": example["cosine"], "removed": f"{example['removed_id']}: {example['removed_text']}",
                            "survivor": f"{example['survivor_id']}: {example['survivor_text']}"}
                           for example in examples])
        return [*sections, section]


def removed_examples(dataset: ReportedDataset, count: int, characters: int = 160) -> list[dict[str, Any]]:
    """The first removed documents of the ledger with their cosine and text snippets of them (from the input shard)
    and of their survivors (from the output)."""
    examples: list[dict[str, Any]] = []
    for record, _ in zip(dataset.records, dataset.shard_files()):  # each shard checked before it is read
        if len(examples) >= count:
            break
        if not record.rejected.get(REASON):
            continue
        found = []
        for batch in iter_parquet_batches(dataset.dataset.reject_path(record.name), ["id", "reason", "detail"]):
            for row in batch.to_pylist():
                if row["reason"] == REASON and len(found) < count - len(examples):
                    found.append(row)
        removed_texts = texts_of(record.source, {row["id"] for row in found}, characters)
        for row in found:
            survivor, _, cosine = row["detail"].partition(" cosine=")
            examples.append({"removed_id": row["id"], "survivor_id": survivor.removeprefix("survivor="),
                             "cosine": cosine, "removed_text": removed_texts.get(row["id"])})
    wanted = {example["survivor_id"] for example in examples}
    survivor_texts: dict[str, str] = {}
    if wanted:
        for batch in dataset.batches(["id", "text"]):
            survivor_texts.update(snippets(batch, wanted, characters))
            if wanted <= survivor_texts.keys():
                break
    for example in examples:
        example["survivor_text"] = survivor_texts.get(example["survivor_id"])
    return examples


def texts_of(path: str, ids: set[str], characters: int) -> dict[str, str]:
    """Snippets of the given documents in one Parquet file; none when the file is gone."""
    found: dict[str, str] = {}
    try:
        for batch in iter_parquet_batches(path, ["id", "text"]):
            found.update(snippets(batch, ids, characters))
    except (OSError, pa.ArrowException) as error:
        raise StageReportError(f"{path}: unreadable ({error})") from None
    return found


def snippets(batch: pa.RecordBatch, ids: set[str], characters: int) -> dict[str, str]:
    mask = pc.is_in(batch.column("id"), pa.array(sorted(ids), pa.string()))
    chosen = batch.filter(mask)
    return {identifier: (text or "")[:characters] + ("…" if text and len(text) > characters else "")
            for identifier, text in zip(chosen.column("id").to_pylist(), chosen.column("text").to_pylist())}


# ---- reduce tasks ----------------------------------------------------------------------------------------------


def count_rows(path: str) -> int:
    with open_parquet(path) as parquet:
        return parquet.metadata.num_rows


def write_table_atomic(table: pa.Table, path: Location, row_group_rows: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary, compression="zstd", compression_level=3, row_group_size=row_group_rows)


@dataclass(frozen=True)
class SampleTask:
    summary: str
    output: str
    cutoff: int
    seed: int


def sample_shard(task: SampleTask) -> None:
    """One shard's embedded documents whose sample key is below the cutoff; the file also records how many
    documents of the shard have an embedding."""
    output = as_location(task.output)
    if output.exists():
        return
    table = read_parquet_table(task.summary, columns=["id", "embedding"])
    ids = table.column("id").to_pylist()
    valid = np.asarray(pc.is_valid(table.column("embedding")), bool)
    keys = sample_keys(ids, task.seed)
    chosen = np.nonzero(valid & below_cutoff(keys, task.cutoff))[0]
    sample = pa.table({"key": keys[chosen], "id": table.column("id").take(chosen),
                       "embedding": table.column("embedding").take(chosen)})
    write_table_atomic(sample.replace_schema_metadata({"embedded": str(int(valid.sum()))}), output)


def fit_centroids(directory: Location, sample_files: list[str], config: SemanticDedupConfig,
                  documents: int) -> dict[str, Any]:
    """Train (or, on a rerun, reuse) the centroids; returns what `kmeans.json` records."""
    record_path, centroids_path = directory / "kmeans.json", directory / "centroids.npy"
    if record_path.exists() and centroids_path.exists():
        return json.loads(record_path.read_text())
    started = time.perf_counter()
    sample, embedded = read_sample([as_location(path) for path in sample_files])
    clusters = min(config.clusters or default_clusters(embedded), len(sample))
    if clusters:
        centroids, objective = train_centroids(sample, clusters, config.iterations, config.seed)
    else:
        centroids, objective = np.empty((0, 0), np.float16), 0.0
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(centroids_path) as temporary, open(temporary, "wb") as handle:
        np.save(handle, centroids, allow_pickle=False)
    record = {"documents": documents, "embedded_documents": embedded, "sample_documents": len(sample),
              "clusters": clusters, "iterations": config.iterations, "seed": config.seed,
              "objective": objective, "training_seconds": round(time.perf_counter() - started, 3),
              "library": f"faiss {faiss_version()}"}
    write_json_atomic(record_path, json.dumps(record, indent=2))
    return record


def faiss_version() -> str:
    import faiss

    return faiss.__version__


def load_centroids(path: str | Location) -> np.ndarray:
    with as_location(path).open("rb") as handle:
        return np.load(handle, allow_pickle=False)


@dataclass(frozen=True)
class AssignTask:
    summary: str
    shard: int
    shard_name: str
    centroids: str
    directory: str
    partitions: int
    block_bytes: int


def assign_shard(task: AssignTask) -> None:
    """Each document's nearest centroid, in row order for the shard's process task, and its rows sent to the
    partition of its cluster (cluster, node, embedding; sorted, in small row groups)."""
    directory = as_location(task.directory)
    assignments = directory / "assignments" / f"{task.shard_name}.parquet"
    name = f"shard-{task.shard:05d}.parquet"
    outputs = [directory / "clusters" / f"part-{partition:05d}" / name for partition in range(task.partitions)]
    if assignments.exists() and all(path.exists() for path in outputs):
        return
    table = read_parquet_table(task.summary, columns=["embedding"])
    matrix, valid = embedding_rows(table.column("embedding"))
    centroids = load_centroids(task.centroids)
    nearest = nearest_centroids(matrix, centroids, task.block_bytes) if len(centroids) else np.zeros(0, np.int32)
    clusters = np.full(table.num_rows, -1, np.int32)
    clusters[valid] = nearest
    nodes = node_keys(task.shard, table.num_rows)[valid]
    order = np.lexsort((nodes, nearest))
    members = pa.table({"cluster": pa.array(nearest[order], CLUSTER_TYPE), "node": pa.array(nodes[order]),
                        "embedding": table.column("embedding").filter(pa.array(valid)).take(pa.array(order))})
    partition = nearest[order] % task.partitions
    for index, path in enumerate(outputs):
        write_table_atomic(members.filter(pa.array(partition == index)), path, MEMBER_ROW_GROUP)
    write_table_atomic(pa.table({CLUSTER_COLUMN: pa.array(clusters, CLUSTER_TYPE, mask=~valid)}), assignments)


@dataclass(frozen=True)
class PairsTask:
    directory: str
    partition: int
    partitions: int
    threshold: float
    block_bytes: int


def cluster_groups(sizes: dict[int, int], limit: int) -> list[tuple[int, int]]:
    """Consecutive clusters (lowest, highest id) holding at most `limit` documents together; a larger cluster alone."""
    groups: list[list[int]] = []
    held = 0
    for cluster in sorted(sizes):
        if not groups or held + sizes[cluster] > limit:
            groups.append([cluster, cluster])
            held = 0
        groups[-1][1] = cluster
        held += sizes[cluster]
    return [(lowest, highest) for lowest, highest in groups]


def read_cluster_range(path: Location, lowest: int, highest: int) -> pa.Table:
    """The rows of clusters lowest..highest of one cluster file, reading only the row groups that may hold them."""
    with open_parquet(path) as parquet:
        metadata = parquet.metadata
        chosen = []
        for group in range(metadata.num_row_groups):
            statistics = metadata.row_group(group).column(0).statistics
            if statistics is None or not statistics.has_min_max or (statistics.min <= highest and statistics.max >= lowest):
                chosen.append(group)
        table = parquet.read_row_groups(chosen) if chosen else parquet.schema_arrow.empty_table()
    cluster = table.column("cluster")
    return table.filter(pc.and_(pc.greater_equal(cluster, lowest), pc.less_equal(cluster, highest)))


def group_partition(task: PairsTask) -> dict[str, Any]:
    """Duplicate groups of every cluster of one partition, a bounded number of documents at a time: a star of edges
    per group (to its smallest node) and each grouped node's highest cosine."""
    directory = as_location(task.directory)
    stats_path = directory / "pairs" / f"part-{task.partition:05d}.json"
    if stats_path.exists():
        return json.loads(stats_path.read_text())
    files = partition_files(directory / "clusters", task.partition)
    sizes: Counter[int] = Counter()
    for path in files:
        ids, counts = np.unique(read_parquet_table(path, columns=["cluster"]).column("cluster").to_numpy(),
                                return_counts=True)
        sizes.update(dict(zip(ids.tolist(), counts.tolist())))
    edges, cosines = [], []
    candidates = pairs = 0
    for lowest, highest in cluster_groups(sizes, GROUP_DOCUMENTS):
        table = pa.concat_tables([read_cluster_range(path, lowest, highest) for path in files])
        clusters, nodes = table.column("cluster").to_numpy(), table.column("node").to_numpy()
        order = np.lexsort((nodes, clusters))
        clusters, nodes = clusters[order], nodes[order]
        matrix, _ = embedding_rows(table.column("embedding").take(pa.array(order)))
        bounds = np.flatnonzero(np.diff(clusters)) + 1
        for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(clusters)]):
            found = find_duplicates(matrix[start:stop], task.threshold, task.block_bytes)
            members = nodes[start:stop]
            edges.append(pl.DataFrame({"a": members[found.centres], "b": members[found.members]}, schema=EDGES))
            grouped = np.isfinite(found.cosines)
            cosines.append(pl.DataFrame({"node": members[grouped], "cosine": found.cosines[grouped]}, schema=COSINES))
            candidates += found.candidates
            pairs += found.pairs
    edge_frame = pl.concat(edges) if edges else pl.DataFrame(schema=EDGES)
    write_parquet_atomic(edge_frame.sort("a", "b"), directory / "edges" / f"part-{task.partition:05d}.parquet")
    cosine_frame = pl.concat(cosines) if cosines else pl.DataFrame(schema=COSINES)
    write_partitioned(cosine_frame.sort("node"), partition_of(pl.col("node"), task.partitions),
                      directory / "cosines", f"from-{task.partition:05d}", task.partitions)
    stats = {"sizes": [sizes[cluster] for cluster in sorted(sizes)], "candidates": candidates, "pairs": pairs}
    stats_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stats_path, json.dumps(stats))
    return stats


@dataclass(frozen=True)
class DetailsTask:
    directory: str
    shard: int
    shard_name: str
    partitions: int


def write_details(task: DetailsTask) -> None:
    """One shard's removed rows with their survivor and their highest cosine within their group, in row order."""
    directory = as_location(task.directory)
    output = directory / "details" / f"{task.shard_name}.parquet"
    if output.exists():
        return
    removals = read_frame(removal_path(directory, task.shard_name))
    cosines = (read_frames(partition_files(directory / "cosines", task.shard % task.partitions), COSINES)
               .filter(pl.col("node") // (1 << ROW_BITS) == task.shard)
               .select(row=(pl.col("node") % (1 << ROW_BITS)).cast(pl.UInt32), cosine="cosine"))
    details = removals.join(cosines, on="row", how="left").select("row", "survivor_id", "cosine").sort("row")
    if details["cosine"].null_count():
        raise RuntimeError(f"{task.shard_name}: a removed row has no cosine; the reduce files are inconsistent")
    write_parquet_atomic(details, output)


# ---- preview ---------------------------------------------------------------------------------------------------


@dataclass
class SemanticPreview:
    """What `semantic-dedup-plan` found: the share each threshold removes in whole clusters chosen at random."""

    dataset: str
    documents: int
    embedded_documents: int
    clusters: int
    sample_documents: int
    seed: int
    chosen_clusters: int
    chosen_documents: int
    largest_chosen_cluster: int
    thresholds: list[float]
    removed: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def preview_semantic_dedup(path: str, thresholds: list[float], documents_wanted: int,
                           config: SemanticDedupConfig | None = None) -> SemanticPreview:
    """Train the centroids as the stage would (same sample, same seed), choose whole clusters at random until they
    are expected to hold `documents_wanted` documents, and deduplicate them at each threshold. Duplicates never
    cross clusters, so the share removed in whole clusters is what the stage removes there; a sample of documents
    would find a pair only when both ends were drawn."""
    config = config or SemanticDedupConfig()
    started = time.perf_counter()
    dataset = Dataset(path)
    manifest = dataset.manifest()
    check_embedding_field(manifest.schema, config.embedding_column)
    documents = manifest.rows
    cutoff = sample_cutoff(training_sample_size(config, documents), documents)
    keys, ids, parts, embedded = [], [], [], 0
    for batch in dataset.iter_batches(columns=["id", config.embedding_column]):
        matrix, valid = embedding_rows(batch.column(config.embedding_column))
        present_ids = pc.filter(pc.cast(batch.column("id"), pa.string()), pa.array(valid))
        check_normalised(matrix, present_ids, config.embedding_column)
        present = present_ids.to_pylist()
        embedded += len(present)
        batch_keys = sample_keys(present, config.seed)
        chosen = np.nonzero(below_cutoff(batch_keys, cutoff))[0]
        keys.append(batch_keys[chosen])
        ids.extend(present[index] for index in chosen)
        parts.append(matrix[chosen])
    sample = np.concatenate(parts) if parts else np.empty((0, 0), np.float16)
    if len(sample):
        sample = sample[np.lexsort((np.asarray(ids, object).astype(str), np.concatenate(keys)))]
    clusters = min(config.clusters or default_clusters(embedded), len(sample))
    preview = SemanticPreview(str(path), documents, embedded, clusters, len(sample), config.seed, 0, 0, 0,
                              list(thresholds), [0] * len(thresholds))
    if not clusters:
        return preview
    centroids, _ = train_centroids(sample, clusters, config.iterations, config.seed)
    block_bytes = config.block_mb << 20
    expected = np.bincount(nearest_centroids(sample, centroids, block_bytes), minlength=clusters) \
        * (embedded / len(sample))
    order = np.argsort(sample_keys([f"cluster-{cluster}" for cluster in range(clusters)], config.seed), kind="stable")
    enough = int(np.searchsorted(np.cumsum(expected[order]), documents_wanted)) + 1
    chosen = np.zeros(clusters, bool)
    chosen[order[:enough]] = True
    members: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for batch in dataset.iter_batches(columns=[config.embedding_column]):
        matrix, _ = embedding_rows(batch.column(config.embedding_column))
        nearest = nearest_centroids(matrix, centroids, block_bytes)
        keep = chosen[nearest]
        members.append(matrix[keep])
        labels.append(nearest[keep])
    matrix, label = np.concatenate(members), np.concatenate(labels)
    order = np.argsort(label, kind="stable")
    matrix, label = matrix[order], label[order]
    bounds = np.flatnonzero(np.diff(label)) + 1
    preview.chosen_clusters = int(chosen.sum())
    preview.chosen_documents = len(label)
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(label)]):
        preview.largest_chosen_cluster = max(preview.largest_chosen_cluster, int(stop - start))
        for index, threshold in enumerate(thresholds):
            preview.removed[index] += len(find_duplicates(matrix[start:stop], threshold, block_bytes).members)
    preview.seconds = round(time.perf_counter() - started, 3)
    return preview


def format_preview(preview: SemanticPreview) -> str:
    lines = [
        f"semantic dedup preview of {preview.dataset}",
        f"  documents   {preview.documents:,} ({preview.embedded_documents:,} with an embedding)",
        f"  k-means     {preview.clusters:,} clusters trained on {preview.sample_documents:,} sampled documents "
        f"(seed {preview.seed}), as the stage would",
        f"  sample      {preview.chosen_clusters:,} whole clusters chosen at random: "
        f"{preview.chosen_documents:,} documents, the largest cluster {preview.largest_chosen_cluster:,}",
        "",
        f"  {'threshold':>9}  {'removed':>9}  {'share':>7}  {'estimated in the dataset':>24}",
    ]
    for threshold, removed in zip(preview.thresholds, preview.removed):
        share = removed / preview.chosen_documents if preview.chosen_documents else 0.0
        lines.append(f"  {threshold:>9.4g}  {removed:>9,}  {share:>7.2%}  "
                     f"{round(share * preview.embedded_documents):>24,}")
    lines += ["", "Duplicates never cross k-means clusters, so the share removed in whole clusters is what the stage",
              f"removes in them; {preview.seconds:.1f} s."]
    return "\n".join(lines)
