"""Semantic dedup: the k-means libraries compared (same centroids with any thread count? how fast?) and the stage at
scale (wall time, peak memory of the process tree, per-phase figures) on synthetic embeddings with planted copies.

Run: python benchmarks/bench_semantic_dedup.py kmeans --documents 50000 --clusters 200
     python benchmarks/bench_semantic_dedup.py cluster 5000 10000 20000 40000
     python benchmarks/bench_semantic_dedup.py scale 200000 --work /tmp/semantic-scale [--clusters K]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from dedup_scale import PeakMemory
from threadpoolctl import threadpool_limits

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent))  # tests.test_quality_bucket.write_dataset commits a dataset of a table

DIMENSION = 384
TOPICS = 200
COPY_SHARE = 0.05


def synthetic_embeddings(documents: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit float16 vectors around 200 topics (two of one topic meet at cosine about 0.5), and planted copies, each
    of an original that is no copy, at cosine about 0.97; returns the vectors, the copies and their originals."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((TOPICS, DIMENSION)).astype(np.float32)
    vectors = centres[rng.integers(0, TOPICS, documents)] + rng.standard_normal((documents, DIMENSION)).astype(np.float32)
    copied = rng.random(documents) < COPY_SHARE
    copies, candidates = np.flatnonzero(copied), np.flatnonzero(~copied)
    originals = candidates[rng.integers(0, len(candidates), len(copies))]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[copies] = vectors[originals] + 0.25 / np.sqrt(DIMENSION) * rng.standard_normal((len(copies), DIMENSION))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float16), copies, originals


def planted_recall(run: Path, copies: np.ndarray, originals: np.ndarray, documents: int) -> dict[str, int]:
    """Planted (copy, original) pairs that ended in one duplicate group, and those k-means put in two clusters."""
    import polars as pl

    group = np.arange(documents)
    ledger = pl.read_parquet(run / "_rejects" / "*.parquet")
    removed = ledger["id"].str.slice(4).cast(pl.Int64).to_numpy()
    group[removed] = ledger["detail"].str.extract(r"survivor=doc-(\d+)").cast(pl.Int64).to_numpy()
    cluster = np.empty(documents, np.int64)
    for path in sorted((run / "_work" / "semantic_dedup" / "assignments").glob("*.parquet")):
        rows = pl.read_parquet(run.parent / "embedded" / path.name, columns=["id"])["id"].str.slice(4).cast(pl.Int64)
        cluster[rows.to_numpy()] = pl.read_parquet(path)["semantic_cluster"].to_numpy()
    return {"planted_pairs": len(copies), "found": int(np.sum(group[copies] == group[originals])),
            "split_by_kmeans": int(np.sum(cluster[copies] != cluster[originals]))}


def digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()[:12]


def compare_kmeans(documents: int, clusters: int, iterations: int) -> None:
    """Centroid digests and fit seconds of scikit-learn's lloyd (n_init=1, random_state) and faiss, by threads."""
    import faiss
    from sklearn.cluster import KMeans

    points = synthetic_embeddings(documents)[0].astype(np.float32)
    rows = []
    for threads in (1, 2, 3):
        with threadpool_limits(1, user_api="blas"), threadpool_limits(threads, user_api="openmp"):
            started, cpu = time.perf_counter(), time.process_time()
            model = KMeans(clusters, n_init=1, random_state=0, max_iter=iterations, tol=0, algorithm="lloyd").fit(points)
            rows.append(("scikit-learn lloyd", threads, time.perf_counter() - started, time.process_time() - cpu,
                         digest(model.cluster_centers_)))
    for threads in (1, 2, 3):
        faiss.omp_set_num_threads(threads)
        started, cpu = time.perf_counter(), time.process_time()
        kmeans = faiss.Kmeans(DIMENSION, clusters, niter=iterations, seed=0, max_points_per_centroid=documents)
        kmeans.train(points)
        rows.append(("faiss Kmeans", threads, time.perf_counter() - started, time.process_time() - cpu,
                     digest(kmeans.centroids)))
    print(f"{documents:,} points x {DIMENSION} dims, k={clusters}, {iterations} iterations")
    print("| library | OpenMP threads | wall s | CPU s | centroids (sha1) |\n|---|---:|---:|---:|---|")
    for library, threads, wall, cpu, centroids in rows:
        print(f"| {library} | {threads} | {wall:.2f} | {cpu:.2f} | `{centroids}` |")


def run_scale(documents: int, work: Path, shards: int, workers: int, clusters: int | None) -> None:
    """The stage on `documents` synthetic embeddings in `shards` shards, as `gristmill semantic-dedup` on a local
    pool; wall time and the peak resident memory of the whole process tree."""
    from tests.test_quality_bucket import write_dataset

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    vectors, copies, originals = synthetic_embeddings(documents)
    table = pa.table({"id": [f"doc-{index:09d}" for index in range(documents)],
                      "text": pa.nulls(documents, pa.string()),
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIMENSION)})
    data = write_dataset(work / "embedded", table, shards)
    del table, vectors
    command = [sys.executable, "-m", "pipeline", "semantic-dedup", "--input", str(data), "--output",
               str(work / "deduplicated"), "--threshold", "0.9", "--executor", "local", "--workers", str(workers)]
    command += ["--clusters", str(clusters)] if clusters else []
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=BENCHMARKS.parent, stdout=subprocess.DEVNULL)
    monitor = PeakMemory(process.pid)
    if process.wait() != 0:
        raise SystemExit(f"{' '.join(command)} exited {process.returncode}")
    wall, peak = time.perf_counter() - started, monitor.stop()
    record = json.loads((work / "deduplicated" / "_work" / "semantic_dedup" / "semantic_dedup.json").read_text())
    recall = planted_recall(work / "deduplicated", copies, originals, documents)
    print(json.dumps({"documents": documents, "shards": shards, "workers": workers, **recall,
                      "wall_seconds": round(wall, 1), "peak_rss_gib": round(peak / 2 ** 30, 2), **record}, indent=2))


def measure_clusters(sizes: list[int], block_mb: int) -> None:
    """Peak memory (tracemalloc: numpy reports its buffers) and seconds of the pairs of one cluster, by its size."""
    import tracemalloc

    from gristmill.stages.dedup.semantic_dedup import find_duplicates

    print("| members | float16 rows MiB | peak beyond them MiB | seconds | pairs at 0.9 |\n|---:|---:|---:|---:|---:|")
    for size in sizes:
        matrix = synthetic_embeddings(size)[0]
        with threadpool_limits(1):
            tracemalloc.start()
            started = time.perf_counter()
            found = find_duplicates(matrix, 0.9, block_mb << 20)
            seconds = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        print(f"| {size:,} | {matrix.nbytes / 2 ** 20:.0f} | {peak / 2 ** 20:.0f} | {seconds:.1f} | {found.pairs:,} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    kmeans = modes.add_parser("kmeans")
    kmeans.add_argument("--documents", type=int, default=50_000)
    kmeans.add_argument("--clusters", type=int, default=200)
    kmeans.add_argument("--iterations", type=int, default=20)
    scale = modes.add_parser("scale")
    scale.add_argument("documents", type=int)
    scale.add_argument("--work", type=Path, default=Path("/tmp/semantic-scale"))
    scale.add_argument("--shards", type=int, default=8)
    scale.add_argument("--workers", type=int, default=2)
    scale.add_argument("--clusters", type=int, default=None, help="k (default: the stage's, one per 10,000)")
    cluster = modes.add_parser("cluster")
    cluster.add_argument("sizes", type=int, nargs="+")
    cluster.add_argument("--block-mb", type=int, default=64)
    arguments = parser.parse_args()
    if arguments.mode == "cluster":
        measure_clusters(arguments.sizes, arguments.block_mb)
    elif arguments.mode == "kmeans":
        compare_kmeans(arguments.documents, arguments.clusters, arguments.iterations)
    else:
        run_scale(arguments.documents, arguments.work, arguments.shards, arguments.workers, arguments.clusters)


if __name__ == "__main__":
    main()
