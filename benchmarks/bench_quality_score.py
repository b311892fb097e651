"""Scoring throughput of the `quality_score` stage on ~2 KB documents, against fastText's own predict on the same texts.

Rates are documents per CPU second of this one process (all work is single-threaded), i.e. per core; both sides score
the same batches in alternating rounds, and the speed-up is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path
from pydoc_data.topics import topics as PYDOC_TOPICS

import numpy as np
import pyarrow as pa
from rounds import as_json, markdown_table, run_rounds, summarise

from gristmill.classifiers.training import train_classifier
from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA
from gristmill.stages.quality.fasttext_model import TrainingParameters, load_fasttext
from gristmill.stages.quality.preprocess import fasttext_lines, tokenize
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=50_000, help="documents scored per round")
    parser.add_argument("--chars", type=int, default=2_000, help="characters per document")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
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
        results = run_rounds({"quality_score stage": lambda: score_with_stage(stage, batches),
                              "fastText predict": lambda: score_with_fasttext(fasttext_model, batches)}, args.rounds)
    summary = summarise(results, data.num_rows, "quality_score stage")

    print(f"\n{data.num_rows:,} documents of {mean_bytes:,.0f} bytes on average, batches of {BATCH_ROWS:,}; model "
          f"dim {parameters.dim}, wordNgrams {parameters.word_ngrams}, {parameters.bucket:,} buckets "
          f"({card['model_bytes'] / 1e6:.0f} MB), loaded in {setup_seconds:.1f} s; held-out ROC-AUC "
          f"{card['metrics']['roc_auc']:.3f}; medians of {args.rounds} alternating rounds\n")
    print(markdown_table(summary, "docs/s", "stage"))
    stage_rate = summary["rates"]["quality_score stage"]["cpu_median"]
    print(f"\nquality_score stage: {stage_rate:,.0f} docs per CPU second, {stage_rate * mean_bytes / 1e6:.1f} MB/s per core")
    if args.json:
        args.json.write_text(json.dumps({"config": {k: str(v) for k, v in vars(args).items()}, "rounds": as_json(results),
                                         "summary": summary, "mean_bytes": mean_bytes,
                                         "machine": platform.platform()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
