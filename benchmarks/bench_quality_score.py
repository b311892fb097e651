"""Scoring throughput of the `quality_score` stage on ~2 KB documents, against fastText's own predict on the same texts.

Rates are documents per CPU second of this one process (all work is single-threaded), i.e. per core.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydoc_data.topics import topics as PYDOC_TOPICS

from gristmill.pipeline.cli.classifier import train_classifier
from gristmill.stages.quality.fasttext_model import TrainingParameters, load_fasttext
from gristmill.stages.quality.preprocess import fasttext_lines, tokenize
from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA
from gristmill.stages.quality.quality_score import QualityScore, QualityScoreConfig

BATCH_ROWS = 16_384  # what the runner reads per batch (pipeline.dataset.ROW_GROUP_ROWS)


def real_windows(count: int, size: int, rng: random.Random) -> list[str]:
    """Windows of about `size` characters of real English (pydoc topics), cut at word boundaries."""
    words = " ".join(PYDOC_TOPICS[key] for key in sorted(PYDOC_TOPICS)).split(" ")
    windows = []
    for _ in range(count):
        start = rng.randrange(len(words) - size // 4)
        text, end = "", start
        while len(text) < size:
            text += words[end] + " "
            end += 1
        windows.append(text.strip())
    return windows


def make_documents(count: int, size: int, seed: int) -> pa.RecordBatch:
    """Real prose windows and the same windows with shuffled words, half each, ~size characters."""
    rng = random.Random(seed)
    texts = real_windows(count, size, rng)
    for index in range(1, count, 2):
        words = texts[index].split(" ")
        rng.shuffle(words)
        texts[index] = " ".join(words)
    return pa.RecordBatch.from_pylist([{"id": f"d{index}", "text": text} for index, text in enumerate(texts)],
                                      schema=DOCUMENT_SCHEMA)


def score_with_stage(stage: QualityScore, batches: list[pa.RecordBatch]) -> None:
    for batch in batches:
        stage.process(batch)


def score_with_fasttext(model, batches: list[pa.RecordBatch]) -> None:
    """Same tokenisation, then fastText's predict line by line through the raw binding (numpy-2 safe)."""
    predict = model.f.predict
    for batch in batches:
        for line in fasttext_lines(tokenize(batch.column("text"))):
            predict(line + "\n", -1, 0.0, "replace")


def cpu_seconds(function, *args) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    function(*args)
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=50_000, help="documents scored per round")
    parser.add_argument("--chars", type=int, default=2_000, help="characters per document")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-quality-") as scratch:
        train = make_documents(20_000, args.chars, seed=1)
        labels = np.array(["positive", "negative"] * (train.num_rows // 2), object)
        parameters = TrainingParameters(threads=2)  # the defaults: dim 64, 2-grams, 1M buckets
        card = train_classifier(train.column("text"), labels, parameters, Path(scratch) / "model", [], 0.1, binary=True)
        stage = QualityScore(QualityScoreConfig.model_validate({"models": [f"quality={Path(scratch) / 'model'}"]}))
        setup_started = time.perf_counter()
        stage.setup()
        setup_seconds = time.perf_counter() - setup_started
        fasttext_model = load_fasttext(Path(scratch) / "model")

        data = make_documents(args.documents, args.chars, seed=2)
        batches = [data.slice(start, BATCH_ROWS) for start in range(0, data.num_rows, BATCH_ROWS)]
        mean_bytes = sum(len(text.encode()) for text in data.column("text").to_pylist()) / data.num_rows
        score_with_stage(stage, batches[:1])  # warm up
        rates: dict[str, list[float]] = {"quality_score stage": [], "fastText predict": []}
        contenders = [("quality_score stage", score_with_stage, stage), ("fastText predict", score_with_fasttext, fasttext_model)]
        for number in range(args.rounds):
            for name, function, scorer in contenders if number % 2 == 0 else contenders[::-1]:
                cpu, wall = cpu_seconds(function, scorer, batches)
                rates[name].append(data.num_rows / cpu)
                print(f"round {number + 1}: {name}: {data.num_rows / cpu:,.0f} docs/CPU-s ({data.num_rows / wall:,.0f} docs/s wall)")

    print(f"\n{data.num_rows:,} documents of {mean_bytes:,.0f} bytes on average, batches of {BATCH_ROWS:,}; model "
          f"dim {parameters.dim}, wordNgrams {parameters.word_ngrams}, {parameters.bucket:,} buckets "
          f"({card['model_bytes'] / 1e6:.0f} MB), loaded in {setup_seconds:.1f} s; held-out ROC-AUC "
          f"{card['metrics']['roc_auc']:.3f}\n")
    print("| scorer | docs per CPU second (median) | range over rounds | MB/s per core |")
    print("|---|---:|---:|---:|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:,.0f} | {min(values):,.0f}–{max(values):,.0f} | {median * mean_bytes / 1e6:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"config": {k: str(v) for k, v in vars(args).items()}, "rates": rates,
                                         "mean_bytes": mean_bytes, "machine": platform.platform()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
