"""Scoring throughput of classifiers trained on grades: fastText (binarised and per grade) and the embedding model with
a ridge head, on ~2 KB documents of real prose, in documents per CPU second of this process with one thread (per core).

Not a side-by-side comparison, so no alternating rounds: each scorer runs its rounds in turn and the median and range
over rounds are reported.
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
from bench_quality_score import real_windows
from gristmill.classifiers.grades import GradeTraining, train_grade_classifier
from gristmill.stages.quality.embedding_model import load_grade_classifier
from gristmill.stages.quality.fasttext_model import TrainingParameters

KEYWORDS = ("function", "object", "class", "module", "exception", "value")


def grades_of(texts: list[str]) -> np.ndarray:
    """A stand-in grade, 0-5: how many of six keywords a text uses (throughput does not depend on what is learnt)."""
    return np.array([sum(keyword in text.lower() for keyword in KEYWORDS) for text in texts], np.float64).clip(0, 5)


def time_rounds(score, texts: list[str], rounds: int) -> list[dict[str, float]]:
    timings = []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        score(texts)
        timings.append({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu})
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=2_000, help="characters per document")
    parser.add_argument("--fasttext-documents", type=int, default=20_000, help="documents per fastText round")
    parser.add_argument("--embedding-documents", type=int, default=128, help="documents per embedding round")
    parser.add_argument("--embedding-train", type=int, default=256, help="documents the ridge head is fitted on")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()

    rng = random.Random(0)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-grades-") as scratch:
        train_texts = real_windows(20_000, args.chars, rng)
        train = pa.array(train_texts, pa.string())
        grades = grades_of(train_texts)
        data = real_windows(max(args.fasttext_documents, args.embedding_documents), args.chars, rng)
        mean_bytes = sum(len(text.encode()) for text in data) / len(data)
        kinds = {
            "fastText, binarised (P(grade >= 3))": (GradeTraining(label_column="grade", fasttext=TrainingParameters(threads=2)),
                                                    20_000, args.fasttext_documents),
            "fastText, per grade (expected grade)": (GradeTraining(label_column="grade", multiclass=True,
                                                                   fasttext=TrainingParameters(threads=2)),
                                                     20_000, args.fasttext_documents),
            "embedding all-MiniLM-L6-v2 + ridge (predicted grade)": (
                GradeTraining(label_column="grade", kind="embedding", threads=2), args.embedding_train,
                args.embedding_documents),
        }
        for name, (training, train_count, score_count) in kinds.items():
            output = Path(scratch) / str(len(results))
            started = time.perf_counter()
            card = train_grade_classifier(train.slice(0, train_count), grades[:train_count], training, output, [], 0.1)
            trained = time.perf_counter() - started
            started = time.perf_counter()
            scorer = load_grade_classifier(output, threads=1)
            loaded = time.perf_counter() - started
            texts = data[:score_count]
            scorer.score(texts[:64])  # warm up
            timings = time_rounds(scorer.score, texts, args.rounds)
            rates = [score_count / timing["cpu"] for timing in timings]
            results[name] = {"documents": score_count, "train_documents": train_count, "train_seconds": trained,
                             "load_seconds": loaded, "timings": timings, "cpu_rate_median": statistics.median(rates),
                             "cpu_rate_range": [min(rates), max(rates)],
                             "wall_rate_median": statistics.median(score_count / t["wall"] for t in timings),
                             "held_out_spearman": (card["metrics"] or {}).get("spearman")}
            print(f"{name}: {results[name]['cpu_rate_median']:,.1f} docs per CPU second", flush=True)

    print(f"\n~{mean_bytes:,.0f}-byte documents; {args.rounds} rounds each; one scoring thread\n")
    print("| scorer | documents per round | docs per CPU second (median) | range over rounds | wall docs/s | MB/s per core |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, result in results.items():
        low, high = result["cpu_rate_range"]
        print(f"| {name} | {result['documents']:,} | {result['cpu_rate_median']:,.1f} | {low:,.1f}–{high:,.1f} | "
              f"{result['wall_rate_median']:,.1f} | {result['cpu_rate_median'] * mean_bytes / 1e6:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"config": {k: str(v) for k, v in vars(args).items()}, "results": results,
                                         "mean_bytes": mean_bytes, "machine": platform.platform()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
