"""Throughput of the `embed` stage on ~8 KB documents of real English: documents and tokens per CPU second with one
torch thread (per core), for the first 256 tokens and for the mean over chunks; `--device cuda` measures one GPU.

Each mode runs its rounds in turn (no contenders to alternate); the median and range over rounds are reported, with the
share of the time spent tokenising.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
from pathlib import Path

import pyarrow as pa
from bench_grade_classifiers import time_rounds
from bench_quality_score import real_windows
from gristmill.stages.quality.embed import Embed, EmbedConfig


def timed(work) -> dict[str, float]:
    """Wall and CPU seconds of one call."""
    return time_rounds(lambda _: work(), None, 1)[0]


def measure(stage: Embed, batch: pa.RecordBatch, rounds: int) -> dict:
    """Rounds of `process` on one batch; rates per CPU second (one thread: per core) and per wall second."""
    tokens = stage.process(batch).stats["embedded_tokens"]  # a round to warm up, and the tokens every round embeds
    timings = time_rounds(stage.process, batch, rounds)
    tokenising = timed(lambda: stage.encoder.chunk_ids(batch.column("text").to_pylist(), stage.chunks_per_document + 1))
    clock = "wall" if stage.config.device == "cuda" else "cpu"  # a GPU's work is not this process's CPU time
    documents = [batch.num_rows / timing[clock] for timing in timings]
    return {"documents": batch.num_rows, "tokens": tokens, "timings": timings, "clock": clock,
            "documents_per_second": statistics.median(documents), "range": [min(documents), max(documents)],
            "tokens_per_second": statistics.median(tokens / timing[clock] for timing in timings),
            "wall_documents_per_second": statistics.median(batch.num_rows / timing["wall"] for timing in timings),
            "tokenising_share": tokenising[clock] / statistics.median(timing[clock] for timing in timings)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=8_000, help="characters per document")
    parser.add_argument("--documents", type=int, default=128, help="documents per round, first 256 tokens")
    parser.add_argument("--mean-documents", type=int, default=32, help="documents per round, mean over chunks")
    parser.add_argument("--max-chunks", type=int, default=8, help="chunks of 256 tokens averaged by `mean`")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per forward pass")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()

    texts = real_windows(max(args.documents, args.mean_documents), args.chars, random.Random(0))
    mean_bytes = sum(len(text.encode()) for text in texts) / len(texts)
    modes = {
        "first 256 tokens": (EmbedConfig(device=args.device, batch_size=args.batch_size), args.documents),
        f"mean over up to {args.max_chunks} chunks of 256": (
            EmbedConfig(long_documents="mean", max_chunks=args.max_chunks, device=args.device,
                        batch_size=args.batch_size), args.mean_documents),
    }
    results = {}
    for name, (config, count) in modes.items():
        stage = Embed(config)
        load = timed(stage.setup)
        batch = pa.record_batch({"id": [f"d{index}" for index in range(count)], "text": texts[:count]})
        results[name] = measure(stage, batch, args.rounds) | {"load_seconds": load["wall"]}
        print(f"{name}: {results[name]['documents_per_second']:,.2f} docs/s, "
              f"{results[name]['tokens_per_second']:,.0f} tokens/s", flush=True)

    per = "per GPU (wall)" if args.device == "cuda" else "per CPU second, one torch thread"
    print(f"\n~{mean_bytes:,.0f}-byte documents; all-MiniLM-L6-v2; {args.rounds} rounds each; {per}\n")
    print("| mode | documents per round | docs/s (median) | range over rounds | tokens/s | wall docs/s | tokenising |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, result in results.items():
        low, high = result["range"]
        print(f"| {name} | {result['documents']:,} | {result['documents_per_second']:,.2f} | {low:,.2f}–{high:,.2f} | "
              f"{result['tokens_per_second']:,.0f} | {result['wall_documents_per_second']:,.2f} | "
              f"{result['tokenising_share']:.1%} |")
    if args.json:
        args.json.write_text(json.dumps({"config": {key: str(value) for key, value in vars(args).items()},
                                         "results": results, "mean_bytes": mean_bytes,
                                         "machine": platform.platform()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
