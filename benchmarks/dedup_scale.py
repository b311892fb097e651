"""Dedup at scale: wall time and peak memory (whole process tree) of exact + near dedup end to end, and of bands + components.

`documents N` runs `gristmill run` (local pool, 2 workers) over N synthetic ~1 KB documents; `signatures N` pushes N precomputed signatures through the band join and components.

Run: python benchmarks/dedup_scale.py documents 1000000 --work /tmp/scale
     python benchmarks/dedup_scale.py signatures 10000000 --work /tmp/scale
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from source_dataset import write_source_dataset

from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA

BENCHMARKS = Path(__file__).resolve().parent

DOCS_PER_SHARD = 62_500
NEAR_SHARE, EXACT_SHARE = 0.10, 0.03


class PeakMemory:
    """Polls the resident memory of a process and all its descendants; keeps the peak of the sum."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.process, self.interval, self.peak = psutil.Process(pid), interval, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._done.is_set():
            try:
                tree = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(self.interval)

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak


def measured(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=BENCHMARKS.parent, env=env)
    monitor = PeakMemory(process.pid)
    if process.wait() != 0:
        raise SystemExit(f"{' '.join(command)} exited {process.returncode}")
    return time.perf_counter() - started, monitor.stop()


def synthetic_shard(rng: np.random.Generator, vocabulary: pa.Array, rows: int, first_id: int) -> pa.Table:
    """~1 KB documents of Zipf-distributed words; some are edited or exact copies of others in the shard."""
    lengths = rng.integers(120, 220, rows)
    copies = rng.random(rows)
    copied = np.flatnonzero(copies < NEAR_SHARE + EXACT_SHARE)[1:]
    sources = (rng.random(len(copied)) * copied).astype(np.int64)  # always an earlier row
    for row, source in zip(copied, sources):
        lengths[row] = lengths[source]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    words = (rng.zipf(1.2, offsets[-1]) - 1) % len(vocabulary)
    for row, source in zip(copied, sources):
        words[offsets[row]:offsets[row + 1]] = words[offsets[source]:offsets[source + 1]]
        if copies[row] < NEAR_SHARE:  # a near duplicate: a few words replaced
            changed = rng.integers(0, lengths[row], rng.integers(1, 4))
            words[offsets[row] + changed] = rng.integers(0, len(vocabulary), len(changed))
    token_lists = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), vocabulary.take(pa.array(words)))
    texts = pc.binary_join(token_lists, " ")
    ids = pa.array([f"doc-{first_id + row:09d}" for row in range(rows)])
    return pa.table({
        "id": ids, "text": texts, "url": pa.nulls(rows, pa.string()), "domain": pa.nulls(rows, pa.string()),
        "source": pa.array(["synthetic"] * rows), "fetch_time": pa.nulls(rows, pa.timestamp("us", tz="UTC")),
        "lang": pa.array(["en"] * rows), "lang_score": pa.array(rng.random(rows).astype(np.float32)),
    }, schema=DOCUMENT_SCHEMA)


def write_documents(path: Path, documents: int, seed: int = 0) -> None:
    """A complete Gristmill dataset of synthetic documents, written directly (no source stage needed)."""
    rng = np.random.default_rng(seed)
    vocabulary = pa.array(["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 9)))
                           for _ in range(50_000)])
    tables = (synthetic_shard(rng, vocabulary, min(DOCS_PER_SHARD, documents - first), first)
              for first in range(0, documents, DOCS_PER_SHARD))
    write_source_dataset(path, ([table] for table in tables), "synthetic", {"documents": documents, "seed": seed})


def run_documents(documents: int, work: Path) -> dict:
    corpus = work / f"documents-{documents}"
    if not Dataset(corpus).is_complete:
        write_documents(corpus, documents)
    output = work / f"dedup-{documents}"
    shutil.rmtree(output, ignore_errors=True)
    graph = work / "scale.yaml"
    graph.write_text(
        "plugins: [gristmill.stages.dedup.exact_dedup, gristmill.stages.dedup.near_dedup]\nstages:\n"
        f"  exact:\n    stage: exact_dedup\n    input: '{corpus}'\n    params: {{}}\n"
        "  near:\n    stage: near_dedup\n    input: exact\n    params: {survivor: 'highest:lang_score'}\n")
    seconds, peak = measured([sys.executable, "-m", "gristmill.pipeline", "run", str(graph), "--output", str(output),
                              "--executor", "local", "--workers", "2"])
    summary = json.loads((output / "_summary.json").read_text())
    sizes = json.loads((output / "near" / "_work" / "near_dedup" / "cluster_sizes.json").read_text())
    text_bytes = int(pc.sum(pc.binary_length(pa.concat_arrays(
        [batch.column("text") for batch in Dataset(corpus).iter_batches(columns=["text"])]))).as_py())
    return {"workload": "documents", "documents": documents, "text_bytes": text_bytes, "seconds": round(seconds, 1),
            "peak_rss_gib": round(peak / 2**30, 2),
            "stages": [{key: stage[key] for key in ("node", "rows_in", "rows_out", "rejected", "wall_seconds")}
                       for stage in summary["stages"]],
            "near_clusters": {key: sizes[key] for key in ("clusters", "removed", "largest")}}


def write_signature_summaries(directory: Path, documents: int, bands: int, rows: int, seed: int = 0) -> list[str]:
    """Summary files as near_dedup writes them (id, priority, band hashes) for random signatures with planted near-duplicates."""
    from gristmill.stages.dedup.minhash import band_hashes

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    per_shard = 100_000
    for shard, first in enumerate(range(0, documents, per_shard)):
        count = min(per_shard, documents - first)
        path = directory / f"part-{shard:05d}.parquet"
        paths.append(str(path))
        if path.exists():
            continue
        signatures = rng.integers(0, 2**32, (count, bands * rows), dtype=np.uint32)
        duplicates = np.flatnonzero(rng.random(count) < NEAR_SHARE)[1:]
        sources = (rng.random(len(duplicates)) * duplicates).astype(np.int64)  # an earlier row of the shard
        # Each value of a near duplicate agrees with its source's with probability 0.9 (Jaccard ~0.9).
        agree = rng.random((len(duplicates), bands * rows)) < 0.9
        signatures[duplicates] = np.where(agree, signatures[sources], signatures[duplicates])
        hashes = band_hashes(signatures, bands, rows)
        table = pa.table({"id": pa.array([f"sig-{first + row:09d}" for row in range(count)]),
                          "priority": np.zeros(count),
                          **{f"band_{band:03d}": hashes[:, band] for band in range(bands)}})
        pq.write_table(table, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
    return paths


def bands_and_components(directory: str, documents: int) -> None:
    """The near_dedup reduce without verification, over precomputed summaries, on a 2-process local pool."""
    from gristmill.pipeline.engine.executors import make_executor
    from gristmill.pipeline.engine.runner import run_all
    from gristmill.stages.dedup.components import (
        MembersTask,
        connected_components,
        gather_members,
        partition_count,
        remove_non_survivors,
    )
    from gristmill.stages.dedup.lsh import choose_banding
    from gristmill.stages.dedup.near_dedup import (
        BandFilesTask,
        BandJoinTask,
        VerifyTask,
        gather_candidates,
        join_band,
        write_band_files,
    )

    work = Path(directory)
    banding = choose_banding(0.8, 128, 0.05, 0.95)
    summaries = write_signature_summaries(work / "summaries", documents, banding.bands, banding.rows)
    reduce_dir = work / "reduce"
    shutil.rmtree(reduce_dir, ignore_errors=True)
    partitions = partition_count(len(summaries))
    started = time.perf_counter()
    with make_executor("local", 2) as executor:
        def run(fn, items):
            return run_all(executor, fn, items)

        run(write_band_files, [BandFilesTask(path, shard, banding.bands, str(reduce_dir / "bands"))
                               for shard, path in enumerate(summaries)])
        run(join_band, [BandJoinTask(str(reduce_dir / "bands" / f"band-{band:03d}"), str(reduce_dir / "edges"), band,
                                     partitions) for band in range(banding.bands)])
        run(gather_candidates, [VerifyTask(str(reduce_dir / "edges"), tuple(summaries), str(reduce_dir / "candidates"),
                                           partition, partitions, 0.8) for partition in range(partitions)])
        candidates = [str(reduce_dir / "candidates" / f"part-{p:05d}.parquet") for p in range(partitions)]
        roots = connected_components(candidates, reduce_dir / "components", partitions, run)
        run(gather_members, [MembersTask(path, tuple(summaries), str(reduce_dir / "members"), p, partitions)
                             for p, path in enumerate(roots)])
        names = [f"part-{shard:05d}" for shard in range(len(summaries))]
        stats = remove_non_survivors(reduce_dir / "members", ("cluster",), reduce_dir, names, partitions, run)
    steps = len(list((reduce_dir / "components").glob("step-*.json")))
    print(json.dumps({"reduce_seconds": round(time.perf_counter() - started, 1), "component_steps": steps,
                      "clusters": stats["clusters"], "removed": stats["removed"], "largest": stats["largest"]}))


def run_signatures(documents: int, work: Path) -> dict:
    directory = work / f"signatures-{documents}"
    env = dict(os.environ, PYTHONPATH=str(BENCHMARKS))
    code = f"from dedup_scale import bands_and_components; bands_and_components({str(directory)!r}, {documents})"
    seconds, peak = measured([sys.executable, "-c", code], env)
    return {"workload": "signatures", "documents": documents, "seconds_including_generation": round(seconds, 1),
            "peak_rss_gib": round(peak / 2**30, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=["documents", "signatures"])
    parser.add_argument("size", type=int, help="documents (or signatures)")
    parser.add_argument("--work", type=Path, required=True, help="scratch directory")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    result = run_documents(args.size, args.work) if args.workload == "documents" else run_signatures(args.size, args.work)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
