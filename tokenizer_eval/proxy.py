"""Optional proxy runs: train the same small GPT on the eval sample once per tokenizer, at fixed compute, and score
held-out bits per byte, so the corpus metrics can be read against what a model actually learns.

Fixed compute means the same model shape, steps and tokens per step for every tokenizer: a tokenizer that packs more
bytes into a token shows the model more text for the same cost. The training set goes through the ordinary pipeline
(read_text → tokenize → decompose concat_chunk → export), so the runs are what a user would train; the runs and the
held-out scorer (whole documents) are the one proxy-run protocol's (trainer/protocol.py).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.pipeline.tokens.export import export_buckets
from gristmill.stages.tokens.tokenization import load_tokenizer
from gristmill.tokenizer_eval.loading import EvalTokenizer, HuggingFaceTokenizer
from gristmill.tokenizer_eval.sample import CorpusSample
from gristmill.trainer.protocol import ProxyProtocol, ProxyRun, run_all, write_heldout_documents

HELDOUT_SHARE = 0.1  # of the sample's documents, by a hash of their position and text
BATCH = 1024  # held-out texts tokenized at a time


@dataclass(frozen=True)
class ProxySettings:
    steps: int
    tokens_per_step: int = 8_192
    seq_len: int = 256
    model: str = "tiny"
    learning_rate: float = 3e-3
    seed: int = 0

    def protocol(self) -> ProxyProtocol:
        """The proxy protocol these settings make: one seed, `steps` steps, concat batching."""
        return ProxyProtocol(tokens=self.steps * self.tokens_per_step, seeds=[self.seed], training={
            "model": self.model, "batching": "concat", "seq_len": self.seq_len, "tokens_per_step": self.tokens_per_step,
            "warmup_steps": max(1, self.steps // 10), "learning_rate": self.learning_rate,
            "eval_tokens": self.tokens_per_step * 4, "log_every": 10**9})


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


def texts_of(path: Path) -> Iterator[list[str]]:
    """The texts of a JSONL file written by `split_sample`, in batches."""
    batch = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            batch.append(json.loads(line)["text"])
            if len(batch) == BATCH:
                yield batch
                batch = []
    yield batch


def run_proxies(tokenizers: Sequence[EvalTokenizer], sample: CorpusSample, directory: Path, settings: ProxySettings,
                echo: Callable[[str], None] = lambda line: None) -> tuple[list[dict[str, Any]], list[str]]:
    """Train once per tokenizer under `directory` (replaced); returns a row per trained tokenizer and a note per skipped one."""
    if directory.exists():
        shutil.rmtree(directory)  # a rerun trains afresh: exports refuse a non-empty directory, finished runs are reused
    protocol = settings.protocol()
    texts = split_sample(sample, directory / "sample")
    runs, skipped, vocab_sizes = [], [], {}
    for tokenizer in tokenizers:
        if not isinstance(tokenizer, HuggingFaceTokenizer) or tokenizer.fingerprint is None:
            skipped.append(f"{tokenizer.label}: the tokenize stage takes `tokenizers` files with an EOS token only")
            continue
        path = str(Path(tokenizer.path).resolve())
        work = directory / tokenizer.label
        train = export_tokens(path, texts["train"], work / "train", settings.seq_len)
        write_heldout_documents(texts_of(texts["heldout"]), load_tokenizer(path), work / "heldout" / "documents")
        config = protocol.train_config(work / "model", settings.seed, {"heldout": str(work / "heldout")}, None,
                                       data=[str(train)])
        runs.append(ProxyRun(tokenizer.label, settings.seed, config))
        vocab_sizes[tokenizer.label] = tokenizer.vocab_size

    def report(run: ProxyRun, result: dict) -> None:
        echo(f"{run.candidate}: proxy run {protocol.steps} steps × {protocol.tokens_per_step:,} tokens, "
             f"held-out {result['bits_per_byte']['heldout']:.4f} bits/byte")

    results = run_all(runs, on_result=report)
    rows = [{"tokenizer": run.candidate, "bits_per_byte": results[run.candidate, run.seed]["bits_per_byte"]["heldout"],
             "steps": protocol.steps, "training_tokens": protocol.tokens_per_run, "model": settings.model,
             "seq_len": settings.seq_len, "vocab_size": vocab_sizes[run.candidate]} for run in runs]
    return rows, skipped
