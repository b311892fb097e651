"""What checking each input shard's checksum costs a filter stage: length_filter over ~200 MB of documents,
with verified reads (as Gristmill runs) and with the check skipped, in alternating rounds on the same data.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import pyarrow as pa
import xxhash
from bench_io import generate_batches, split_into_shards
from rich.console import Console
from source_dataset import write_source_dataset

import gristmill.pipeline.engine.dataset
from gristmill.pipeline.engine.dataset import Dataset, file_checksum
from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph

MODES = ("verified", "unverified")


def run_filter(source: Path, work: Path, verified: bool) -> tuple[float, float]:
    """Wall and CPU seconds of one length_filter run (in-process executor) into a fresh output."""
    graph_path = work / "filter.yaml"
    graph_path.write_text(f"name: bench\nstages:\n  long:\n    stage: length_filter\n    input: '{source}'\n"
                          "    params: {min_words: 300, max_chars: 20000}\n")
    output = work / "out"
    shutil.rmtree(output, ignore_errors=True)
    graph = load_graph(graph_path, output)
    skipping = mock.patch.object(gristmill.pipeline.engine.dataset, "verified_input", Path) if not verified else mock.MagicMock()
    with skipping, make_executor("inprocess") as executor:
        wall, cpu = time.perf_counter(), time.process_time()
        run_graph(graph, executor, console=Console(file=io.StringIO()))
        return time.perf_counter() - wall, time.process_time() - cpu


def checksum_seconds(dataset: Dataset) -> float:
    started = time.perf_counter()
    for record in dataset.manifest().shards:
        file_checksum(dataset.shard_path(record.name))
        file_checksum(dataset.reject_path(record.name))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=float, default=200, help="Text to generate, in 10^6 bytes.")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="Also save every round here.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        started = time.perf_counter()
        dataset = write_source_dataset(work / "documents", split_into_shards(
            generate_batches(args.megabytes, 8_192, args.seed), args.shards), "generated", {})
        manifest = dataset.manifest()
        print(f"data: {manifest.rows:,} documents in {args.shards} shards, {manifest.bytes / 1e6:.1f} MB on disk "
              f"(generated in {time.perf_counter() - started:.0f} s)")
        run_filter(dataset.path, work, verified=True)  # untimed: page cache and imports warm for both modes
        rounds = []
        for index in range(args.rounds):
            order = MODES if index % 2 == 0 else MODES[::-1]
            result = {mode: run_filter(dataset.path, work, mode == "verified") for mode in order}
            result["checksum_seconds"] = checksum_seconds(dataset)
            rounds.append(result)
            print(f"round {index + 1}: verified {result['verified'][0]:.3f} s, unverified {result['unverified'][0]:.3f} s, "
                  f"ratio {result['verified'][0] / result['unverified'][0]:.3f}")

    def median(mode: str, which: int) -> float:
        return statistics.median(result[mode][which] for result in rounds)

    ratios = [result["verified"][0] / result["unverified"][0] for result in rounds]
    cpu_ratios = [result["verified"][1] / result["unverified"][1] for result in rounds]
    print()
    print("| mode | median wall s | median CPU s |")
    print("|---|---:|---:|")
    for mode in MODES:
        print(f"| {mode} | {median(mode, 0):.3f} | {median(mode, 1):.3f} |")
    print(f"\nverified / unverified, median per-round ratio: wall {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}–{max(ratios):.3f}), CPU {statistics.median(cpu_ratios):.3f}")
    print(f"xxh3 of every data and ledger file alone: median {statistics.median(r['checksum_seconds'] for r in rounds):.3f} s")
    print(f"machine: {platform.machine()}, {platform.python_version()}, pyarrow {pa.__version__}, "
          f"xxhash {xxhash.VERSION}; {datetime.now(timezone.utc):%Y-%m-%d}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
