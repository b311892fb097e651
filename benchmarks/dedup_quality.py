"""Near-dedup quality: precision and recall of `near_dedup` against exact Jaccard, on pairs at controlled similarity.

Bases come from generated text, pydoc topics and (when gensim is installed) real Wikipedia pages; each gets one edited copy.

Run: python benchmarks/dedup_quality.py [--threshold 0.8] [--generated 1500] [--no-verify]
"""

from __future__ import annotations

import argparse
import bz2
import itertools
import json
import random
import re
import tempfile
import time
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import polars as pl
import pyarrow as pa

from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.stages.dedup.minhash import Shingler

LEVELS = [0.5, 0.6, 0.7, 0.75, 0.78, 0.8, 0.82, 0.85, 0.9, 0.95, 1.0]
SHINGLER = Shingler()


def generated_bases(count: int, rng: random.Random) -> list[str]:
    vocabulary = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10)))
                  for _ in range(20_000)]
    weights = 1 / np.arange(1, len(vocabulary) + 1)  # Zipf-like, as in real text
    return [" ".join(rng.choices(vocabulary, weights, k=rng.randint(120, 320))) for _ in range(count)]


def pydoc_bases() -> list[str]:
    """Consecutive pydoc paragraphs joined into documents of ~1.5 KB."""
    paragraphs = [p.strip() for key in sorted(topics) for p in topics[key].split("\n\n") if len(p.split()) > 20]
    documents, current = [], ""
    for paragraph in paragraphs:
        current = f"{current}\n\n{paragraph}" if current else paragraph
        if len(current) > 1500:
            documents.append(current)
            current = ""
    return documents


def wikipedia_bases() -> list[str]:
    """Gensim's bundled test dump: 206 real Wikipedia pages (markup left in), first ~2 KB of each."""
    try:
        from gensim.test.utils import datapath
    except ImportError:
        return []
    dump = Path(datapath("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"))
    xml = bz2.open(dump, "rt", encoding="utf-8").read()
    pages = re.findall(r"<text[^>]*>(.*?)</text>", xml, flags=re.S)
    return [page[:2000] for page in pages if len(page.split()) > 150]


def shingle_set(text: str) -> set[bytes]:
    return set(SHINGLER.shingles(text))


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def edited_copy(text: str, target: float, filler: list[str], rng: random.Random) -> str:
    """Replace or insert words until the word-5-gram Jaccard with the original first falls to the target."""
    original, words = shingle_set(text), text.split()
    step = max(1, len(words) // 200)
    while jaccard(original, shingle_set(" ".join(words))) > target:
        for _ in range(step):
            position = rng.randrange(len(words))
            if rng.random() < 0.7:
                words[position] = rng.choice(filler)
            else:
                words.insert(position, rng.choice(filler))
    return " ".join(words)


def build_corpus(generated: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    bases = ([("generated", text) for text in generated_bases(generated, rng)]
             + [("pydoc", text) for text in pydoc_bases()] + [("wikipedia", text) for text in wikipedia_bases()])
    filler = "the of and to in a is that for it as was with be by on not he this are or his from at".split()
    texts, origins = [], []
    for index, (origin, base) in enumerate(bases):
        texts += [base, edited_copy(base, LEVELS[index % len(LEVELS)], filler, rng)]
        origins += [origin, origin]
    return texts, origins


def true_pairs(texts: list[str], threshold: float) -> dict[tuple[int, int], float]:
    """Every pair with exact Jaccard >= threshold, found through an inverted index of shingles (no pair is missed)."""
    hashes, offsets = SHINGLER.hashes(pa.array(texts))
    postings = (pl.DataFrame({"hash": hashes, "doc": np.repeat(np.arange(len(texts)), np.diff(offsets))}).unique()
                .group_by("hash").agg(pl.col("doc").sort()).filter(pl.col("doc").list.len().is_between(2, 200)))
    candidates = {pair for docs in postings["doc"].to_list() for pair in itertools.combinations(docs, 2)}
    sets = [shingle_set(text) for text in texts]
    return {pair: j for pair in candidates if (j := jaccard(sets[pair[0]], sets[pair[1]])) >= threshold}


def run_near_dedup(texts: list[str], threshold: float, verify: bool, work: Path) -> tuple[dict[int, int], float]:
    """Cluster label of every clustered document (by corpus index) and the stage's wall time."""
    corpus = work / "corpus"
    corpus.mkdir(parents=True)
    for part in range(4):
        with open(corpus / f"part{part}.jsonl", "w") as handle:
            for index in range(part, len(texts), 4):
                handle.write(json.dumps({"id": f"doc-{index:06d}", "text": texts[index]}) + "\n")
    (work / "g.yaml").write_text(
        "plugins: [gristmill.stages.dedup.near_dedup]\nstages:\n"
        f"  read:\n    stage: read_text\n    params: {{paths: ['{corpus}/*.jsonl']}}\n"
        f"  near:\n    stage: near_dedup\n    input: read\n    params: {{threshold: {threshold}, verify: {str(verify).lower()}}}\n")
    started = time.perf_counter()
    with make_executor("local", 2) as executor:
        run_graph(load_graph(work / "g.yaml", work / "run"), executor)
    seconds = time.perf_counter() - started
    directory = work / "run" / "near" / "_work"
    ids = {}
    for shard, path in enumerate(sorted((directory / "summaries").glob("*.parquet"))):
        for row, doc_id in enumerate(pl.read_parquet(path, columns=["id"])["id"].to_list()):
            ids[shard << 32 | row] = int(doc_id.removeprefix("doc-"))
    roots = pl.read_parquet(directory / "near_dedup" / "components" / "roots" / "*.parquet")
    return {ids[node]: root for node, root in zip(roots["node"].to_list(), roots["root"].to_list())}, seconds


def score(clusters: dict[int, int], truth: dict[tuple[int, int], float]) -> tuple[float, float, int, int]:
    members: dict[int, list[int]] = {}
    for doc, root in clusters.items():
        members.setdefault(root, []).append(doc)
    predicted = {tuple(sorted(pair)) for group in members.values() for pair in itertools.combinations(group, 2)}
    hits = len(predicted & truth.keys())
    precision = hits / len(predicted) if predicted else 1.0
    recall = hits / len(truth) if truth else 1.0
    return precision, recall, len(predicted), len(truth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--generated", type=int, default=1500, help="generated base documents")
    parser.add_argument("--no-verify", action="store_true", help="score raw LSH candidates, without the exact check")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    texts, origins = build_corpus(args.generated, args.seed)
    truth = true_pairs(texts, args.threshold)
    with tempfile.TemporaryDirectory() as work:
        clusters, seconds = run_near_dedup(texts, args.threshold, not args.no_verify, Path(work))
    print(f"{len(texts):,} documents ({len(texts) // 2:,} base + edited copy pairs at Jaccard {LEVELS}), "
          f"threshold {args.threshold}, verify={not args.no_verify}, near_dedup wall time {seconds:.1f} s")
    print(f"{'origin':<12} {'pairs>=t':>9} {'predicted':>9} {'precision':>9} {'recall':>7}")
    for origin in ["all", *sorted(set(origins))]:
        keep = (lambda pair: True) if origin == "all" else (lambda pair: origins[pair[0]] == origin)
        subset_truth = {pair: j for pair, j in truth.items() if keep(pair)}
        subset_clusters = {doc: root for doc, root in clusters.items() if origin == "all" or origins[doc] == origin}
        precision, recall, predicted, actual = score(subset_clusters, subset_truth)
        print(f"{origin:<12} {actual:>9,} {predicted:>9,} {precision:>9.4f} {recall:>7.4f}")


if __name__ == "__main__":
    main()
