"""End-to-end tokenize + write throughput against raw `tokenizers.encode_batch` on the same texts and cores.

Shows what Gristmill adds around the tokenizer (EOS, Arrow list column, Megatron .bin/.idx writing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pydoc_data.topics
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tokenizers

from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA
from gristmill.pipeline.tokens.indexed_dataset import IndexedDatasetWriter, token_dtype
from gristmill.stages.tokens.tokenization import (
    DEFAULT_EOS,
    load_tokenizer,
    save_tokenizer,
    train_byte_level_bpe,
)
from gristmill.stages.tokens.tokenize import Tokenize, TokenizeConfig

MB = 1_000_000
BATCH_ROWS = 8_192  # read_text's batch size: the batches the tokenize stage sees in a real run


def make_batches(megabytes: float, seed: int) -> list[pa.RecordBatch]:
    """Documents of 1 to 12 consecutive pydoc paragraphs (real English and code, 0.1 to 20 KB) up to `megabytes`."""
    paragraphs = [p for topic in pydoc_data.topics.topics.values() for p in topic.split("\n\n") if p.strip()]
    rng = random.Random(seed)
    texts, total = [], 0
    while total < megabytes * MB:
        start = rng.randrange(len(paragraphs))
        text = "\n\n".join(paragraphs[start:start + rng.randint(1, 12)])
        texts.append(text)
        total += len(text.encode())
    return [
        pa.RecordBatch.from_pydict(
            {"id": [f"doc-{start + i}" for i in range(len(texts[start:start + BATCH_ROWS]))],
             "text": texts[start:start + BATCH_ROWS]},
            schema=pa.schema([DOCUMENT_SCHEMA.field("id"), DOCUMENT_SCHEMA.field("text")]),
        )
        for start in range(0, len(texts), BATCH_ROWS)
    ]


def run_gristmill(stage: Tokenize, batches: list[pa.RecordBatch], directory: Path) -> int:
    """The tokenize stage's per-batch work, then every document appended to a Megatron .bin/.idx."""
    tokens = 0
    with IndexedDatasetWriter(directory / "tokens", token_dtype(stage.tokenizer.vocab_size)) as writer:
        for batch in batches:
            kept = stage.process(batch).kept
            lengths = kept.column("num_tokens").to_numpy()
            flat = pc.list_flatten(kept.column("tokens")).to_numpy()
            writer.add_batch(flat, lengths, np.ones(len(lengths), np.int64))
            tokens += len(flat)
        writer.finish()
    return tokens


def run_raw(tokenizer: tokenizers.Tokenizer, batches: list[pa.RecordBatch], fast: bool) -> int:
    encode = tokenizer.encode_batch_fast if fast else tokenizer.encode_batch
    tokens = 0
    for batch in batches:
        encodings = encode(batch.column("text").to_pylist(), add_special_tokens=False)
        tokens += sum(len(encoding) for encoding in encodings)
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=4.0, help="MB of text per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vocab-size", type=int, default=8_192, help="BPE trained on pydoc topics, unless --tokenizer")
    parser.add_argument("--tokenizer", help="a tokenizer.json or local tokenizer directory to use instead")
    parser.add_argument("--json", type=Path, help="also write the results here")
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        tokenizer_path = arguments.tokenizer
        if tokenizer_path is None:
            tokenizer_path = workdir / "tokenizer"
            paragraphs = [p for topic in pydoc_data.topics.topics.values() for p in topic.split("\n\n")]
            save_tokenizer(train_byte_level_bpe(paragraphs, arguments.vocab_size), tokenizer_path, DEFAULT_EOS, {})
        stage = Tokenize(TokenizeConfig(tokenizer=str(tokenizer_path)))
        stage.setup()
        raw_tokenizer = load_tokenizer(tokenizer_path).tokenizer
        batches = make_batches(arguments.mb, seed=0)
        text_mb = sum(pc.sum(pc.binary_length(batch.column("text"))).as_py() for batch in batches) / MB
        documents = sum(batch.num_rows for batch in batches)
        contenders: dict[str, Callable[[Path], int]] = {
            "gristmill": lambda directory: run_gristmill(stage, batches, directory),
            "raw encode_batch": lambda directory: run_raw(raw_tokenizer, batches, fast=False),
            "raw encode_batch_fast": lambda directory: run_raw(raw_tokenizer, batches, fast=True),
        }
        names = list(contenders)
        token_counts = {name: contenders[name](workdir) for name in names}  # warm-up and check
        if token_counts["gristmill"] != token_counts["raw encode_batch"] + documents:
            raise RuntimeError(f"token counts disagree: {token_counts}")
        rates: dict[str, list[float]] = {name: [] for name in names}
        cpu_rates: dict[str, list[float]] = {name: [] for name in names}
        ratios, cpu_ratios = [], []
        for number in range(arguments.rounds):
            order = names[number % len(names):] + names[:number % len(names)]  # who goes first rotates
            wall, cpu = {}, {}
            for name in order:
                started, started_cpu = time.perf_counter(), time.process_time()
                contenders[name](workdir)
                wall[name], cpu[name] = time.perf_counter() - started, time.process_time() - started_cpu
                rates[name].append(text_mb / wall[name])
                cpu_rates[name].append(text_mb / cpu[name])
            ratios.append(wall["raw encode_batch"] / wall["gristmill"])
            cpu_ratios.append(cpu["raw encode_batch"] / cpu["gristmill"])

    results = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "tokenizers": tokenizers.__version__, "text_mb": round(text_mb, 2), "documents": documents,
        "tokens": token_counts["gristmill"], "rounds": arguments.rounds,
        "median_mb_s": {name: round(statistics.median(values), 3) for name, values in rates.items()},
        "range_mb_s": {name: [round(min(values), 3), round(max(values), 3)] for name, values in rates.items()},
        "median_cpu_mb_s": {name: round(statistics.median(values), 3) for name, values in cpu_rates.items()},
        "median_ratio_gristmill_to_raw": round(statistics.median(ratios), 3),
        "median_cpu_ratio_gristmill_to_raw": round(statistics.median(cpu_ratios), 3),
    }
    print(f"{text_mb:.1f} MB of text, {documents:,} documents, {token_counts['gristmill']:,} tokens, "
          f"{arguments.rounds} rounds, tokenizers {tokenizers.__version__}, {os.cpu_count()} cores")
    print(f"{'contender':<24} {'median MB/s':>12} {'range':>14} {'MB per CPU s':>13}")
    for name in names:
        low, high = results["range_mb_s"][name]
        print(f"{name:<24} {results['median_mb_s'][name]:>12.2f} {f'{low:.2f}-{high:.2f}':>14} "
              f"{results['median_cpu_mb_s'][name]:>13.2f}")
    print(f"gristmill / raw encode_batch, median of per-round ratios: {results['median_ratio_gristmill_to_raw']:.0%} "
          f"wall-clock, {results['median_cpu_ratio_gristmill_to_raw']:.0%} CPU")
    if arguments.json:
        arguments.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
