"""Optional proxy runs: train the same small GPT on the eval sample once per tokenizer, at fixed compute, and score
held-out bits per byte, so the corpus metrics can be read against what a model actually learns.

Fixed compute means the same model shape, steps and tokens per step for every tokenizer: a tokenizer that packs more
bytes into a token shows the model more text for the same cost. Everything goes through the ordinary pipeline
(read_text → tokenize → decompose concat_chunk → export → trainer), so the runs are what a user would train.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.pipeline.tokens.export import export_buckets
from gristmill.tokenizer_eval.loading import EvalTokenizer, HuggingFaceTokenizer
from gristmill.tokenizer_eval.sample import CorpusSample

HELDOUT_SHARE = 0.1  # of the sample's documents, by a hash of their position and text


@dataclass(frozen=True)
class ProxySettings:
    steps: int
    tokens_per_step: int = 8_192
    seq_len: int = 256
    model: str = "tiny"
    learning_rate: float = 3e-3
    seed: int = 0


def split_sample(sample: CorpusSample, directory: Path) -> dict[str, Path]:
    """Write the sample as train.jsonl and heldout.jsonl (a fixed 10% by hash), the same split for every tokenizer."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"train": directory / "train.jsonl", "heldout": directory / "heldout.jsonl"}
    with contextlib.ExitStack() as stack:
        handles = {name: stack.enter_context(open(path, "w", encoding="utf-8")) for name, path in paths.items()}
        for index, text in enumerate(sample.texts):
            key = xxhash.xxh3_64_intdigest(f"{index}\x1f{text}".encode())
            part = "heldout" if key < HELDOUT_SHARE * 2**64 else "train"
            handles[part].write(json.dumps({"id": f"sample-{index}", "text": text}, ensure_ascii=False) + "\n")
    return paths


def export_tokens(tokenizer_path: str, texts: Path, directory: Path, seq_len: int) -> Path:
    """Tokenize one JSONL file with the tokenize and decompose stages (concat_chunk) and export it for the trainer."""
    graph = directory / "tokens.yaml"
    graph.parent.mkdir(parents=True, exist_ok=True)
    graph.write_text(json.dumps({
        "plugins": ["gristmill.stages.tokens.tokenize", "gristmill.stages.tokens.decompose"],
        "stages": {
            "read": {"stage": "read_text", "params": {"paths": [str(texts)]}},
            "tokens": {"stage": "tokenize", "input": "read", "params": {"tokenizer": tokenizer_path}},
            "pieces": {"stage": "decompose", "input": "tokens",
                       "params": {"mode": "concat_chunk", "sequence_length": seq_len}},
        },
    }))
    run_graph(load_graph(graph, directory / "run"), make_executor("inprocess"))
    export_buckets(directory / "run" / "pieces", directory / "export")
    return directory / "export"


def run_proxies(tokenizers: Sequence[EvalTokenizer], sample: CorpusSample, directory: Path, settings: ProxySettings,
                echo: Callable[[str], None] = lambda line: None) -> tuple[list[dict[str, Any]], list[str]]:
    """Train once per tokenizer under `directory` (replaced); returns a row per trained tokenizer and a note per skipped one."""
    from gristmill.trainer.config import TrainConfig
    from gristmill.trainer.train import train  # torch loads only when proxy runs are asked for

    if directory.exists():
        shutil.rmtree(directory)  # a rerun trains afresh: exports refuse a non-empty directory, checkpoints would resume
    texts = split_sample(sample, directory / "sample")
    rows, skipped = [], []
    for tokenizer in tokenizers:
        if not isinstance(tokenizer, HuggingFaceTokenizer) or tokenizer.fingerprint is None:
            skipped.append(f"{tokenizer.label}: the tokenize stage takes `tokenizers` files with an EOS token only")
            continue
        path = str(Path(tokenizer.path).resolve())
        work = directory / tokenizer.label
        exports = {part: export_tokens(path, texts[part], work / part, settings.seq_len) for part in texts}
        config = TrainConfig(output=str(work / "model"), data=[str(exports["train"])],
                             heldout={"heldout": str(exports["heldout"])}, model=settings.model, batching="concat",
                             seq_len=settings.seq_len, tokens_per_step=settings.tokens_per_step, steps=settings.steps,
                             warmup_steps=max(1, settings.steps // 10), learning_rate=settings.learning_rate,
                             eval_tokens=settings.tokens_per_step * 4, seed=settings.seed, log_every=10**9)
        metrics = train(config)
        bits = metrics["final_bits_per_byte"]["heldout"]
        echo(f"{tokenizer.label}: proxy run {settings.steps} steps × {settings.tokens_per_step:,} tokens, "
             f"held-out {bits:.4f} bits/byte")
        rows.append({"tokenizer": tokenizer.label, "bits_per_byte": bits, "steps": settings.steps,
                     "training_tokens": settings.steps * settings.tokens_per_step, "model": settings.model,
                     "seq_len": settings.seq_len, "vocab_size": tokenizer.vocab_size})
    return rows, skipped
