"""The near_dedup reduce at a size no earlier run reached: CPU seconds, peak memory per process and disk, step by step.

docs/SCALE.md projects a whole crawl from per-document rates; this checks the projection where it is most at risk,
the global reduce whose largest task (one band of every document) grows with the whole dataset.

The summaries (id, priority, 16 band hashes per document) are generated shard by shard, as `dedup_scale.py signatures`
makes them but without drawing 128 signature values per document first: each band hash of a planted near copy (10%
of documents) equals its source's with probability 0.9^8, which is what 8 rows of values agreeing with probability
0.9 give. Then the reduce runs unchanged (write band files, band join, candidates, connected components, members,
survivors, removal lists), each step on a fresh local pool, so the CPU of the finished workers is counted.

Run: python benchmarks/scale_check.py 100000000 --work DIR [--workers 2] [--join-workers 1] [--max-rss-gib 20]
     python benchmarks/scale_check.py 17500000 --work DIR --exact-partition   # exact_dedup's largest task
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.runner import run_all
from gristmill.stages.dedup.components import (
    ChooseTask,
    MembersTask,
    choose_survivors,
    connected_components,
    gather_members,
    partition_count,
    remove_non_survivors,
    write_parquet_atomic,
)
from gristmill.stages.dedup.exact_dedup import CLUSTER_COLUMNS
from gristmill.stages.dedup.lsh import (
    FALSE_NEGATIVE_WEIGHT,
    FALSE_POSITIVE_WEIGHT,
    choose_banding,
)
from gristmill.stages.dedup.near_dedup import (
    BandFilesTask,
    BandJoinTask,
    VerifyTask,
    band_column,
    gather_candidates,
    join_band,
    write_band_files,
)

NEAR_SHARE = 0.10  # as dedup_scale.py: 10% of documents are near copies of an earlier document of their shard
VALUE_AGREEMENT = 0.9  # each signature value of a near copy agrees with its source's with this probability


class Monitor:
    """Polls every process of this tree: per step, the peak RSS of the largest single process and of their sum.

    Stops the run (SIGKILL to the workers, then an error) when the sum passes `limit` bytes: the machine is shared.
    """

    def __init__(self, limit: int, interval: float = 0.25):
        self.limit, self.interval = limit, interval
        self.step = "start"
        self.peaks: dict[str, dict[str, int]] = {}
        self.exceeded: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        me = psutil.Process()
        while not self._done.is_set():
            try:
                tree = [me, *me.children(recursive=True)]
                sizes = []
                for process in tree:
                    try:
                        sizes.append(process.memory_info().rss)
                    except psutil.Error:
                        pass
                peak = self.peaks.setdefault(self.step, {"process": 0, "tree": 0})
                peak["process"] = max(peak["process"], max(sizes[1:], default=0))
                peak["tree"] = max(peak["tree"], sum(sizes))
                if sum(sizes) > self.limit and self.exceeded is None:
                    self.exceeded = f"{self.step}: process tree at {sum(sizes) / 2**30:.1f} GiB"
                    for process in tree[1:]:
                        try:
                            process.send_signal(signal.SIGKILL)
                        except psutil.Error:
                            pass
            except psutil.Error:
                pass
            time.sleep(self.interval)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def folder_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file()) if path.exists() else 0


@dataclass
class Step:
    name: str
    wall_s: float
    cpu_s: float
    peak_process_gib: float
    peak_tree_gib: float
    disk_gib: float


@dataclass(frozen=True)
class SummaryShard:
    directory: str
    shard: int
    first: int
    rows: int
    bands: int
    band_agreement: float
    seed: int


def write_summary_shard(task: SummaryShard) -> str:
    """One shard's summary as near_dedup writes it without verification: id, priority and one uint64 per band."""
    path = Path(task.directory) / f"part-{task.shard:05d}.parquet"
    if path.exists():
        return str(path)
    rng = np.random.default_rng([task.seed, task.shard])
    hashes = rng.integers(0, 2**64, (task.rows, task.bands), dtype=np.uint64)
    copies = np.flatnonzero(rng.random(task.rows) < NEAR_SHARE)[1:]
    sources = (rng.random(len(copies)) * copies).astype(np.int64)  # always an earlier row, as dedup_scale.py
    agree = rng.random((len(copies), task.bands)) < task.band_agreement
    hashes[copies] = np.where(agree, hashes[sources], hashes[copies])
    numbers = pc.cast(pa.array(np.arange(task.first, task.first + task.rows)), pa.string())
    ids = pc.binary_join_element_wise("sig-", pc.utf8_lpad(numbers, 9, "0"), "")
    table = pa.table({"id": ids, "priority": np.zeros(task.rows),
                      **{band_column(band): hashes[:, band] for band in range(task.bands)}})
    temporary = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, temporary)
    os.replace(temporary, path)
    return str(path)


@dataclass(frozen=True)
class MembersShard:
    directory: str
    shard: int
    rows: int
    seed: int


def write_exact_members(task: MembersShard) -> None:
    """One shard's share of one exact_dedup partition, as `partition_by_hash` writes it: node, 32-hex-digit id,
    priority, group (null in global mode) and the text hash; 10% of rows repeat an earlier row's hash."""
    path = Path(task.directory) / "part-00000" / f"shard-{task.shard:05d}.parquet"
    if path.exists():
        return
    rng = np.random.default_rng([task.seed, task.shard])
    high = rng.integers(0, 2**64, task.rows, dtype=np.uint64)
    low = rng.integers(0, 2**64, task.rows, dtype=np.uint64)
    copies = np.flatnonzero(rng.random(task.rows) < NEAR_SHARE)[1:]
    sources = (rng.random(len(copies)) * copies).astype(np.int64)
    high[copies], low[copies] = high[sources], low[sources]
    digits = rng.integers(0, 2**64, (task.rows, 2), dtype=np.uint64)
    ids = [f"{first:016x}{second:016x}" for first, second in digits.tolist()]
    frame = pl.DataFrame({"node": (np.int64(task.shard) << np.int64(32)) | np.arange(task.rows, dtype=np.int64),
                          "id": ids, "priority": np.zeros(task.rows),
                          "group": pl.Series([None] * task.rows, dtype=pl.String), "hash_high": high, "hash_low": low})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(frame, path)


def check_exact_partition(rows: int, work: Path, shards: int, limit_gib: float) -> dict:
    """exact_dedup's largest task, choosing the survivors of one partition (a 32nd of every document), on one worker."""
    directory = work / f"exact-partition-{rows}"
    members = directory / "members"
    shutil.rmtree(directory / "chosen", ignore_errors=True)
    monitor = Monitor(int(limit_gib * 2**30))
    per_shard = -(-rows // shards)
    with make_executor("local", 2) as executor:
        run_all(executor, write_exact_members, [MembersShard(str(members), shard, min(per_shard, rows - shard * per_shard), 0)
                                               for shard in range(shards) if shard * per_shard < rows])
    monitor.step = "choose survivors"
    wall, cpu = time.perf_counter(), own_cpu() + children_cpu()
    with make_executor("local", 1) as executor:
        sizes = run_all(executor, choose_survivors, [ChooseTask(str(members), CLUSTER_COLUMNS, str(directory / "chosen"),
                                                                0, 1)])[0]
    monitor.stop()
    if monitor.exceeded:
        raise SystemExit(f"stopped: {monitor.exceeded} (limit {limit_gib} GiB)")
    peak = monitor.peaks["choose survivors"]
    return {"rows": rows, "files": shards, "wall_s": round(time.perf_counter() - wall, 1),
            "cpu_s": round(own_cpu() + children_cpu() - cpu, 1), "peak_process_gib": round(peak["process"] / 2**30, 2),
            "members_gib": round(folder_bytes(members) / 2**30, 2),
            "removed": sum((size - 1) * count for size, count in sizes.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("documents", type=int)
    parser.add_argument("--work", type=Path, required=True, help="scratch directory (emptied of an earlier reduce)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--join-workers", type=int, default=None,
                        help="workers of the band join alone (default --workers): one band task of 100M documents "
                             "holds about 9 GiB, so a 24 GiB machine runs one at a time")
    parser.add_argument("--per-shard", type=int, default=100_000, help="documents per summary file (dedup_scale: 100,000)")
    parser.add_argument("--max-rss-gib", type=float, default=20.0, help="stop when the process tree passes this")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--exact-partition", action="store_true",
                        help="instead: exact_dedup's survivor choice over one partition of DOCUMENTS rows "
                             "(17,500,000: a 32nd of 560M documents)")
    args = parser.parse_args()
    if args.exact_partition:
        result = check_exact_partition(args.documents, args.work, 100, args.max_rss_gib)
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return

    banding = choose_banding(0.8, 128, FALSE_POSITIVE_WEIGHT, FALSE_NEGATIVE_WEIGHT)
    work = args.work / f"check-{args.documents}"
    summaries_dir, reduce_dir = work / "summaries", work / "reduce"
    summaries_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(reduce_dir, ignore_errors=True)
    monitor = Monitor(int(args.max_rss_gib * 2**30))
    steps: list[Step] = []

    @contextmanager
    def step(name: str, folder: Path | None):
        monitor.step = name
        wall, cpu = time.perf_counter(), own_cpu() + children_cpu()
        yield
        if monitor.exceeded:
            raise SystemExit(f"stopped: {monitor.exceeded} (limit {args.max_rss_gib} GiB)")
        peak = monitor.peaks.get(name, {"process": 0, "tree": 0})
        steps.append(Step(name, round(time.perf_counter() - wall, 1), round(own_cpu() + children_cpu() - cpu, 1),
                          round(peak["process"] / 2**30, 2), round(peak["tree"] / 2**30, 2),
                          round(folder_bytes(folder) / 2**30, 2) if folder else 0.0))
        print(json.dumps(steps[-1].__dict__), file=sys.stderr, flush=True)

    def pooled(fn, items, workers=args.workers):
        with make_executor("local", workers) as executor:
            return run_all(executor, fn, items)

    shards = [SummaryShard(str(summaries_dir), shard, first, min(args.per_shard, args.documents - first),
                           banding.bands, VALUE_AGREEMENT ** banding.rows, 0)
              for shard, first in enumerate(range(0, args.documents, args.per_shard))]
    partitions = partition_count(len(shards))
    with step("generate summaries", summaries_dir):
        summaries = tuple(pooled(write_summary_shard, shards))
    with step("write band files", reduce_dir / "bands"):
        pooled(write_band_files, [BandFilesTask(path, shard, banding.bands, str(reduce_dir / "bands"))
                                  for shard, path in enumerate(summaries)])
    with step("band join", reduce_dir / "edges"):
        pooled(join_band, [BandJoinTask(str(reduce_dir / "bands" / f"band-{band:03d}"), str(reduce_dir / "edges"),
                                        band, partitions) for band in range(banding.bands)],
               args.join_workers or args.workers)
    with step("candidates", reduce_dir / "candidates"):
        pooled(gather_candidates, [VerifyTask(str(reduce_dir / "edges"), summaries, str(reduce_dir / "candidates"),
                                              partition, partitions, 0.8) for partition in range(partitions)])
    candidates = [str(reduce_dir / "candidates" / f"part-{p:05d}.parquet") for p in range(partitions)]
    with step("connected components", reduce_dir / "components"), make_executor("local", args.workers) as executor:
        roots = connected_components(candidates, reduce_dir / "components", partitions,
                                     lambda fn, items: run_all(executor, fn, items))
    with step("members", reduce_dir / "members"):
        pooled(gather_members, [MembersTask(path, summaries, str(reduce_dir / "members"), p, partitions)
                                for p, path in enumerate(roots)])
    with step("survivors and removal lists", reduce_dir / "removals"), \
            make_executor("local", args.workers) as executor:
        names = [f"part-{shard:05d}" for shard in range(len(summaries))]
        stats = remove_non_survivors(reduce_dir / "members", ("cluster",), reduce_dir, names, partitions,
                                     lambda fn, items: run_all(executor, fn, items))
    monitor.stop()
    reduce_steps = steps[1:]
    result = {
        "documents": args.documents, "shards": len(shards), "partitions": partitions, "workers": args.workers,
        "join_workers": args.join_workers or args.workers,
        "bands": banding.bands, "rows": banding.rows,
        "steps": [item.__dict__ for item in steps],
        "reduce": {"wall_s": round(sum(item.wall_s for item in reduce_steps), 1),
                   "cpu_s": round(sum(item.cpu_s for item in reduce_steps), 1),
                   "peak_process_gib": max(item.peak_process_gib for item in reduce_steps),
                   "peak_tree_gib": max(item.peak_tree_gib for item in reduce_steps)},
        "disk_gib": {"summaries": round(folder_bytes(summaries_dir) / 2**30, 2),
                     "reduce": round(folder_bytes(reduce_dir) / 2**30, 2)},
        "component_steps": len(list((reduce_dir / "components").glob("step-*.json"))),
        "clusters": {key: stats[key] for key in ("clusters", "removed", "largest")},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "memory_gib": round(psutil.virtual_memory().total / 2**30, 1)},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
