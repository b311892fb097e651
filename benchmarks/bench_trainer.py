"""Trainer speed: tokens/s and MFU at a fixed context, and the cost per token of Dataset Decomposition vs concat-and-chunk.

GPU goals: 124M at 1k context ≥ 45% MFU (bf16, torch.compile); DD up to 8k costs ≤ 1.1× concat-and-chunk at 2k per token.
On CPU it runs the same measurements at tiny sizes (the defaults when no GPU is present).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gristmill.pipeline.tokens.indexed_dataset import IndexedDatasetWriter
from gristmill.trainer.config import TrainConfig
from gristmill.trainer.train import train

GPU_DEFAULTS = {"model": "124M", "vocab_size": 50_304, "context": 1024, "throughput_tokens_per_step": 1 << 19,
                "min_bucket": 8, "max_bucket": 13, "concat_len": 2048, "tokens_per_step": 1 << 19, "steps": 30}
CPU_DEFAULTS = {"model": "tiny", "vocab_size": 2048, "context": 256, "throughput_tokens_per_step": 4096,
                "min_bucket": 4, "max_bucket": 7, "concat_len": 32, "tokens_per_step": 2048, "steps": 30}


def parse_args() -> argparse.Namespace:
    gpu = torch.cuda.is_available()
    defaults = GPU_DEFAULTS if gpu else CPU_DEFAULTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=defaults["model"], help="Model for both measurements.")
    parser.add_argument("--vocab-size", type=int, default=defaults["vocab_size"], help="Vocabulary (random tokens).")
    parser.add_argument("--context", type=int, default=defaults["context"], help="Sequence length of the throughput run.")
    parser.add_argument("--throughput-tokens-per-step", type=int, default=defaults["throughput_tokens_per_step"])
    parser.add_argument("--micro-batch-tokens", type=int, default=None, help="Tokens per forward pass (accumulate).")
    parser.add_argument("--min-bucket", type=int, default=defaults["min_bucket"], help="k of the shortest DD bucket.")
    parser.add_argument("--max-bucket", type=int, default=defaults["max_bucket"], help="k of the longest DD bucket.")
    parser.add_argument("--concat-len", type=int, default=defaults["concat_len"], help="Concat-and-chunk length.")
    parser.add_argument("--tokens-per-step", type=int, default=defaults["tokens_per_step"], help="DD vs concat runs.")
    parser.add_argument("--steps", type=int, default=defaults["steps"], help="Steps per run.")
    parser.add_argument("--rounds", type=int, default=3, help="Alternating DD / concat rounds.")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU).")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=gpu)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=gpu)
    parser.add_argument("--peak-flops", type=float, default=None, help="Peak FLOP/s of the device, for MFU.")
    parser.add_argument("--json", type=Path, default=None, help="Also write every run's figures here.")
    return parser.parse_args()


def write_corpus(directory: Path, vocab_size: int, min_bucket: int, max_bucket: int, tokens: int,
                 seed: int = 0) -> tuple[list[str], str]:
    """Random-token documents with log-normal lengths (median 4 × the shortest bucket), as DD buckets and as
    whole documents for concat-and-chunk. Token values do not change the cost, so they are uniform."""
    rng = np.random.default_rng(seed)
    shortest = 1 << min_bucket
    lengths = np.clip(rng.lognormal(np.log(4 * shortest), 1.0, size=4 * tokens // shortest), shortest + 1, 16 << max_bucket)
    lengths = lengths[np.cumsum(lengths) <= tokens].astype(np.int64)
    buckets = {k: IndexedDatasetWriter(directory / f"bucket-{k:02d}", np.uint16) for k in range(min_bucket, max_bucket + 1)}
    documents = IndexedDatasetWriter(directory / "documents", np.uint16)
    for length in lengths.tolist():
        document = rng.integers(0, vocab_size, length, dtype=np.uint16)
        documents.add_document([document])
        start = 0
        for k in range(max_bucket, min_bucket - 1, -1):  # binary expansion into 2^k + 1 token pieces
            while length - start >= (1 << k) + 1:
                buckets[k].add_document([document[start:start + (1 << k) + 1]])
                start += 1 << k
    prefixes = []
    for k, writer in buckets.items():
        if writer.finish().documents:
            (directory / f"bucket-{k:02d}.json").write_text(json.dumps({"prefix": f"bucket-{k:02d}", "capacity": (1 << k) + 1}))
            prefixes.append(str(directory / f"bucket-{k:02d}"))
    documents.finish()
    return prefixes, str(directory / "documents")


def run(label: str, output: Path, **settings) -> dict:
    metrics = train(TrainConfig(output=str(output), warmup_steps=2, log_every=10**9, **settings))
    throughput = metrics["throughput"]
    seconds_per_token = 1 / throughput["tokens_per_second"]
    print(f"  {label:<32} {throughput['tokens_per_second']:>12,.0f} tok/s  "
          f"{throughput['achieved_flops_per_device'] / 1e12:8.3f} TFLOP/s  "
          f"MFU {'n/a' if throughput['mfu'] is None else format(throughput['mfu'], '.1%')}  "
          f"peak mem {metrics['peak_memory_bytes'] / 2**30:.2f} GiB", file=sys.stderr)
    return {"label": label, "seconds_per_token": seconds_per_token, **throughput,
            "peak_memory_bytes": metrics["peak_memory_bytes"], "peak_memory_kind": metrics["peak_memory_kind"],
            "mean_seq_len": statistics.fmean(record["seq_len"] for record in metrics["history"]),
            "device": metrics["device"], "parameters": metrics["model"]["parameters"]}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    common = {"model": args.model, "vocab_size": args.vocab_size, "steps": args.steps, "bf16": args.bf16, "compile": args.compile,
              "peak_flops": args.peak_flops, "micro_batch_tokens": args.micro_batch_tokens}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as workdir:
        root = Path(workdir)
        corpus_tokens = max(args.tokens_per_step, args.throughput_tokens_per_step) * args.steps * 2
        buckets, documents = write_corpus(root, args.vocab_size, args.min_bucket, args.max_bucket, corpus_tokens)
        print(f"corpus: {corpus_tokens:,} tokens in buckets 2^{args.min_bucket}..2^{args.max_bucket} "
              f"({time.perf_counter() - started:.1f}s)", file=sys.stderr)
        print("throughput", file=sys.stderr)
        throughput = run(f"{args.model} concat @ {args.context}", root / "throughput", data=[documents],
                         batching="concat", seq_len=args.context, tokens_per_step=args.throughput_tokens_per_step,
                         **common)
        rounds = []
        for number in range(args.rounds):
            print(f"round {number + 1}", file=sys.stderr)
            dd = {"batching": "dd", "data": buckets, "curriculum": "uniform", "cycles": 1,
                  "seq_len": 1 << args.max_bucket}
            concat = {"batching": "concat", "data": [documents], "seq_len": args.concat_len}
            contenders = {"dd": (f"DD up to {1 << args.max_bucket} (uniform)", dd),
                          "concat": (f"concat @ {args.concat_len}", concat)}
            order = ["dd", "concat"] if number % 2 == 0 else ["concat", "dd"]
            result = {name: run(contenders[name][0], root / f"{name}-{number}", tokens_per_step=args.tokens_per_step,
                                **contenders[name][1], **common) for name in order}
            result["ratio"] = result["dd"]["seconds_per_token"] / result["concat"]["seconds_per_token"]
            rounds.append(result)
    ratios = [result["ratio"] for result in rounds]
    mfu = "n/a (no peak FLOP/s for this device)" if throughput["mfu"] is None else f"{throughput['mfu']:.1%}"
    print(f"\ndevice: {throughput['device']}; model {args.model} ({throughput['parameters'] / 1e6:.1f}M parameters); "
          f"bf16={args.bf16} compile={args.compile}; {time.perf_counter() - started:.0f}s in all\n")
    print("| measurement | value |\n|---|---:|")
    print(f"| tokens/s, {args.model} at {args.context} context | {throughput['tokens_per_second']:,.0f} |")
    print(f"| achieved TFLOP/s | {throughput['achieved_flops_per_device'] / 1e12:.3f} |")
    print(f"| MFU | {mfu} |")
    print(f"| peak memory ({throughput['peak_memory_kind']}) | {throughput['peak_memory_bytes'] / 2**30:.2f} GiB |")
    print(f"| DD (up to {1 << args.max_bucket}) µs/token, median | "
          f"{statistics.median(r['dd']['seconds_per_token'] for r in rounds) * 1e6:.2f} |")
    print(f"| concat-and-chunk ({args.concat_len}) µs/token, median | "
          f"{statistics.median(r['concat']['seconds_per_token'] for r in rounds) * 1e6:.2f} |")
    print(f"| DD / concat cost per token, median of {args.rounds} rounds (range) | "
          f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) |")
    print(f"| DD mean sequence length | {statistics.fmean(r['dd']['mean_seq_len'] for r in rounds):.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": {key: str(value) for key, value in vars(args).items()},
                                         "machine": {"platform": platform.platform(), "torch": torch.__version__},
                                         "throughput": throughput, "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
