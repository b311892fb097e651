"""Read and write throughput of Gristmill's dataset format against raw pyarrow.parquet, same data.

Shows what the shard writer's temp name, atomic rename and xxh3 checksum cost over plain Parquet.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gristmill.pipeline.engine.dataset import (
    COMPRESSION,
    COMPRESSION_LEVEL,
    ROW_GROUP_ROWS,
    ParquetShardWriter,
    iter_parquet_batches,
)
from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA, document_id

MB = 1_000_000
CONTENDERS = ("gristmill", "raw")
SYLLABLES = (
    "a an ar ba be bi bo ca ce chi co da de di do e el en er es fa fe fi fo ga ge gi go ha he hi "
    "ho i in is ka ke ki ko la le li lo ma me mi mo na ne ni no o on or pa pe pi po qu ra re ri "
    "ro sa se si so st ta te th ti to tr u un ur va ve vi vo wa we wi ya yo za ze zi é ü ñ ö"
).split()
TOP_LEVEL_DOMAINS = ("com", "org", "net", "de", "fr", "io")
LANGUAGES = {"en": 60, "de": 10, "fr": 9, "es": 8, "ru": 5, "ja": 4, "zh": 4}
SOURCES = ("CC-MAIN-2026-33", "CC-MAIN-2026-38", "CC-MAIN-2026-42")
FETCH_START_US = int(datetime(2026, 8, 1, tzinfo=timezone.utc).timestamp()) * 1_000_000
FETCH_SPAN_US = 90 * 24 * 3600 * 1_000_000
MEAN_TEXT_BYTES = 2_000
TEXT_SIGMA = 0.6  # text length is log-normal around MEAN_TEXT_BYTES


def zipf_cumulative_weights(count: int, exponent: float) -> list[float]:
    total, cumulative = 0.0, []
    for rank in range(1, count + 1):
        total += rank**-exponent
        cumulative.append(total)
    return cumulative


def make_words(rng: random.Random, count: int) -> list[str]:
    """Word-like tokens of 1 to 6 syllables; about one in twelve ends with a comma or full stop."""
    words = []
    for _ in range(count):
        word = "".join(rng.choices(SYLLABLES, k=rng.choice((1, 1, 2, 2, 2, 3, 3, 4, 5, 6))))
        mark = rng.random()
        words.append(word + ("." if mark < 0.05 else "," if mark < 0.08 else ""))
    return words


def generate_batches(megabytes: float, batch_rows: int, seed: int) -> list[pa.RecordBatch]:
    """Documents in DOCUMENT_SCHEMA until their texts total `megabytes` of UTF-8."""
    rng = random.Random(seed)
    words = make_words(rng, 30_000)
    # Uniform draws from a big urn filled with Zipf frequencies: twice as fast as weighted draws.
    urn = rng.choices(words, cum_weights=zipf_cumulative_weights(len(words), 1.05), k=1 << 18)
    token_bytes = sum(len(word.encode()) + 1 for word in urn) / len(urn)
    domains = [
        f"{''.join(rng.choices(SYLLABLES, k=3))}.{rng.choice(TOP_LEVEL_DOMAINS)}"
        for _ in range(5_000)
    ]
    domain_weights = zipf_cumulative_weights(len(domains), 0.9)
    mu = math.log(MEAN_TEXT_BYTES) - TEXT_SIGMA**2 / 2

    batches, text_bytes, row = [], 0, 0
    while text_bytes < megabytes * MB:
        columns: dict[str, list] = {name: [] for name in DOCUMENT_SCHEMA.names}
        while len(columns["id"]) < batch_rows and text_bytes < megabytes * MB:
            length = min(max(rng.lognormvariate(mu, TEXT_SIGMA), 100), 40_000)
            text = " ".join(rng.choices(urn, k=max(1, round(length / token_bytes))))
            domain = rng.choices(domains, cum_weights=domain_weights)[0]
            path = "/".join(rng.choices(words[:2_000], k=rng.randint(1, 3)))
            url = f"https://{domain}/{path}?p={rng.randrange(10**6)}"
            columns["id"].append(document_id(url, str(row)))
            columns["text"].append(text)
            columns["url"].append(url)
            columns["domain"].append(domain)
            columns["source"].append(rng.choice(SOURCES))
            columns["fetch_time"].append(FETCH_START_US + rng.randrange(FETCH_SPAN_US))
            columns["lang"].append(rng.choices(list(LANGUAGES), weights=LANGUAGES.values())[0])
            columns["lang_score"].append(rng.uniform(0.5, 1.0))
            text_bytes += len(text.encode())
            row += 1
        arrays = [pa.array(columns[field.name], type=field.type) for field in DOCUMENT_SCHEMA]
        batches.append(pa.RecordBatch.from_arrays(arrays, schema=DOCUMENT_SCHEMA))
    return batches


def split_into_shards(batches: list[pa.RecordBatch], shards: int) -> list[list[pa.RecordBatch]]:
    """Contiguous runs of batches, one per shard, as even as whole batches allow."""
    shards = min(shards, len(batches))
    bounds = [round(i * len(batches) / shards) for i in range(shards + 1)]
    return [batches[bounds[i] : bounds[i + 1]] for i in range(shards)]


def write_gristmill(directory: Path, shards: list[list[pa.RecordBatch]]) -> list[Path]:
    paths = []
    for index, batches in enumerate(shards):
        path = directory / f"part-{index:05d}.parquet"
        writer = ParquetShardWriter(path, DOCUMENT_SCHEMA)
        for batch in batches:
            writer.write(batch)
        writer.commit()
        paths.append(path)
    return paths


def write_raw(directory: Path, shards: list[list[pa.RecordBatch]]) -> list[Path]:
    """Plain pq.ParquetWriter, buffering batches into ROW_GROUP_ROWS-row tables like Gristmill."""
    paths = []
    for index, batches in enumerate(shards):
        path = directory / f"part-{index:05d}.parquet"
        with pq.ParquetWriter(
            path, DOCUMENT_SCHEMA, compression=COMPRESSION, compression_level=COMPRESSION_LEVEL
        ) as writer:
            buffer: list[pa.RecordBatch] = []
            for batch in batches:
                buffer.append(batch)
                if sum(buffered.num_rows for buffered in buffer) >= ROW_GROUP_ROWS:
                    writer.write_table(pa.Table.from_batches(buffer), row_group_size=ROW_GROUP_ROWS)
                    buffer = []
            if buffer:
                writer.write_table(pa.Table.from_batches(buffer), row_group_size=ROW_GROUP_ROWS)
        paths.append(path)
    return paths


def read_gristmill(paths: list[Path]) -> tuple[int, int]:
    """Rows and decoded bytes of every batch, so each one is really materialised."""
    rows = nbytes = 0
    for path in paths:
        for batch in iter_parquet_batches(path):
            rows += batch.num_rows
            nbytes += batch.nbytes
    return rows, nbytes


def read_raw(paths: list[Path]) -> tuple[int, int]:
    rows = nbytes = 0
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=ROW_GROUP_ROWS):
            rows += batch.num_rows
            nbytes += batch.nbytes
    return rows, nbytes


WRITERS: dict[str, Callable[[Path, list[list[pa.RecordBatch]]], list[Path]]] = {
    "gristmill": write_gristmill,
    "raw": write_raw,
}
READERS: dict[str, Callable[[list[Path]], tuple[int, int]]] = {
    "gristmill": read_gristmill,
    "raw": read_raw,
}


def timed(function: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    """Call `function`; return its result, wall-clock seconds and CPU seconds of this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def run_round(
    number: int, shards: list[list[pa.RecordBatch]], read_passes: int, workdir: Path
) -> dict:
    """Write, then read, with both contenders; who goes first swaps every round.

    Rates are MB per wall-clock second and MB per CPU second (all threads of this process).
    """
    order = CONTENDERS if number % 2 == 0 else CONTENDERS[::-1]
    rows = sum(batch.num_rows for batches in shards for batch in batches)
    payload = sum(batch.nbytes for batches in shards for batch in batches) / MB
    result: dict = {"order": list(order), "write": {}, "read": {}}
    files = {}
    for name in order:
        directory = workdir / f"round-{number}" / name
        directory.mkdir(parents=True)
        files[name], wall, cpu = timed(WRITERS[name], directory, shards)
        result["write"][name] = {"mb_s": payload / wall, "cpu_mb_s": payload / cpu}
    result["file_bytes"] = {
        name: sum(path.stat().st_size for path in paths) for name, paths in files.items()
    }
    os.sync()  # so write-back of this round's files does not land in the timed reads
    for name in order:  # untimed pass: checks the data and warms both readers alike
        rows_read, _ = READERS[name](files[name])
        if rows_read != rows:
            raise RuntimeError(f"{name} read {rows_read} rows, {rows} were written")
    seconds = {name: [0.0, 0.0] for name in order}
    for _ in range(read_passes):  # one read is short, so interleaved passes are summed
        for name in order:
            _, wall, cpu = timed(READERS[name], files[name])
            seconds[name][0] += wall
            seconds[name][1] += cpu
    read_mb = payload * read_passes
    for name, (wall, cpu) in seconds.items():
        result["read"][name] = {"mb_s": read_mb / wall, "cpu_mb_s": read_mb / cpu}
    for paths in files.values():
        for path in paths:
            path.unlink()
    return result


def describe_round(result: dict) -> str:
    return "; ".join(
        f"{op} MB/s "
        + ", ".join(f"{name} {result[op][name]['mb_s']:.0f}" for name in result["order"])
        for op in ("write", "read")
    )


def summarise(rounds: list[dict]) -> dict[str, dict[str, float]]:
    """Median MB/s per contender, and medians of the per-round Gristmill/raw ratios."""
    summary = {}
    for op in ("write", "read"):
        rates = {name: [r[op][name]["mb_s"] for r in rounds] for name in CONTENDERS}
        ratios = [r[op]["gristmill"]["mb_s"] / r[op]["raw"]["mb_s"] for r in rounds]
        cpu_ratios = [r[op]["gristmill"]["cpu_mb_s"] / r[op]["raw"]["cpu_mb_s"] for r in rounds]
        summary[op] = {
            "gristmill_mb_s": statistics.median(rates["gristmill"]),
            "raw_mb_s": statistics.median(rates["raw"]),
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "cpu_ratio": statistics.median(cpu_ratios),
        }
    return summary


def markdown_table(summary: dict[str, dict[str, float]]) -> str:
    lines = [
        "| path | Gristmill MB/s | raw pyarrow MB/s | Gristmill / raw | "
        "range over rounds | Gristmill / raw by CPU time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for op, row in summary.items():
        lines.append(
            f"| {op} | {row['gristmill_mb_s']:.0f} | {row['raw_mb_s']:.0f} | {row['ratio']:.2f} | "
            f"{row['ratio_min']:.2f}–{row['ratio_max']:.2f} | {row['cpu_ratio']:.2f} |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--megabytes", type=float, default=200, help="total document text in MB (10^6 bytes)"
    )
    parser.add_argument(
        "--rounds", type=int, default=6, help="alternating rounds (even: each side leads equally)"
    )
    parser.add_argument("--read-passes", type=int, default=3, help="timed reads per round")
    parser.add_argument("--shards", type=int, default=4, help="files each side writes per round")
    parser.add_argument("--batch-rows", type=int, default=8_192, help="rows per record batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated documents")
    parser.add_argument("--workdir", type=Path, help="parent of the scratch directory")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    batches = generate_batches(args.megabytes, args.batch_rows, args.seed)
    data = {
        "rows": sum(batch.num_rows for batch in batches),
        "batches": len(batches),
        "arrow_bytes": sum(batch.nbytes for batch in batches),
        "text_bytes": sum(batch.column("text").nbytes for batch in batches),
    }
    elapsed = time.perf_counter() - started
    print(f"generated {data['rows']} documents in {elapsed:.1f}s", file=sys.stderr)

    shards = split_into_shards(batches, args.shards)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-io-", dir=args.workdir) as workdir:
        for number in range(args.rounds):
            rounds.append(run_round(number, shards, args.read_passes, Path(workdir)))
            print(f"round {number + 1}: {describe_round(rounds[-1])}", file=sys.stderr)
    data["file_bytes"] = rounds[0]["file_bytes"]
    summary = summarise(rounds)

    print(
        f"{data['rows']} documents, {data['arrow_bytes'] / MB:.0f} MB of Arrow data in "
        f"{len(DOCUMENT_SCHEMA)} columns (text {data['text_bytes'] / MB:.0f} MB), "
        f"{len(shards)} shards, {COMPRESSION} level {COMPRESSION_LEVEL}, "
        f"{ROW_GROUP_ROWS}-row row groups; on disk "
        + ", ".join(f"{name} {size / MB:.1f} MB" for name, size in data["file_bytes"].items())
    )
    print(
        f"MB/s = uncompressed Arrow MB (all columns) per wall-clock second; "
        f"medians of {args.rounds} alternating rounds\n"
    )
    print(markdown_table(summary))

    if args.json is not None:
        machine = {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pyarrow": pa.__version__,
        }
        config = {key: str(value) if isinstance(value, Path) else value
                  for key, value in vars(args).items()}
        results = {"config": config, "machine": machine, "data": data, "rounds": rounds,
                   "summary": summary}
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
