"""MinHash signatures from raw text on one core: Gristmill's bulk numpy signatures against datasketch, same documents.

Every contender normalises, shingles, hashes and signs the same documents inside its timer, in alternating rounds.
Run: python benchmarks/bench_minhash.py [--docs 2000] [--rounds 7] [--num-perm 128] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import unicodedata
from collections.abc import Callable
from pydoc_data.topics import topics

import datasketch
import numpy as np
import pyarrow as pa
import xxhash
from datasketch import MinHash
from rounds import as_json, markdown_table, run_rounds, summarise

from gristmill.stages.dedup.minhash import MinHasher, Shingler

SUBJECT = "gristmill signatures_of"
# Unicode punctuation, deleted as Gristmill's normalisation deletes \p{P}.
PUNCTUATION = dict.fromkeys(code for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code))[0] == "P")


def real_documents(count: int, words_per_doc: int = 284, seed: int = 0) -> list[str]:
    """Documents of ~284 words (~280 word 5-grams) cut from the standard library's pydoc topics."""
    words = " ".join(topics[key] for key in sorted(topics)).split()
    rng = random.Random(seed)
    starts = [rng.randrange(len(words) - words_per_doc) for _ in range(count)]
    return [" ".join(words[start:start + words_per_doc]) for start in starts]


def python_shingles(text: str, n: int = 5) -> list[bytes]:
    """Word n-grams as a datasketch user would make them in plain Python, with Gristmill's normalisation
    (NFKC, lower case, no punctuation), so datasketch and Gristmill hash the very same shingles."""
    words = unicodedata.normalize("NFKC", text).lower().translate(PUNCTUATION).split()
    if len(words) < n:
        return [" ".join(words).encode()] if words else []
    return [" ".join(words[start:start + n]).encode() for start in range(len(words) - n + 1)]


def contenders(texts: list[str], num_perm: int) -> dict[str, Callable[[], object]]:
    """Each takes the raw texts to signatures; the shingling is inside, as it is in a real run."""
    shingler, hasher = Shingler(), MinHasher(num_perm)

    def update_batch_sha1() -> list[MinHash]:
        signatures = []
        for text in texts:
            signature = MinHash(num_perm=num_perm)
            signature.update_batch(python_shingles(text))
            signatures.append(signature)
        return signatures

    def bulk(hashfunc=None) -> Callable[[], list]:
        extra = {"hashfunc": hashfunc} if hashfunc else {}
        return lambda: MinHash.bulk([python_shingles(text) for text in texts], num_perm=num_perm, **extra)

    return {
        "datasketch update_batch (sha1)": update_batch_sha1,
        "datasketch bulk (sha1)": bulk(),
        "datasketch bulk (xxh32)": bulk(xxhash.xxh32_intdigest),
        "datasketch bulk (Gristmill's H)": bulk(shingler.hash_shingle),
        SUBJECT: lambda: hasher.signatures_of(pa.array(texts), shingler),
    }


def bit_identical(runs: dict[str, Callable[[], object]]) -> bool:
    """Whether datasketch with Gristmill's shingle hash gives exactly Gristmill's signatures on every document."""
    theirs = runs["datasketch bulk (Gristmill's H)"]()
    ours = runs[SUBJECT]()
    return len(theirs) == len(ours) and all(np.array_equal(r.hashvalues, s) for r, s in zip(theirs, ours))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2_000, help="documents every contender signs per round")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds; medians are reported")
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--json", help="also write every round and the summary here")
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    pa.set_cpu_count(1)

    texts = real_documents(args.docs)
    runs = contenders(texts, args.num_perm)
    identical = bit_identical(runs)  # also the untimed warm-up of both code paths
    if not identical:
        sys.exit("signatures differ from datasketch's")
    results = run_rounds(runs, args.rounds)
    summary = summarise(results, args.docs, SUBJECT)
    shingles = np.mean([len(python_shingles(text)) for text in texts])
    print(f"{args.docs:,} documents from raw text, {shingles:.0f} word 5-grams each on average, {args.num_perm} "
          f"permutations, one core, datasketch {datasketch.__version__}; medians of {args.rounds} alternating rounds\n")
    print(markdown_table(summary, "docs/s", "Gristmill"))
    print(f"\nbit-identical to datasketch (affine32, Gristmill's H) on all {args.docs:,} documents: yes")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"config": vars(args), "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                       "bit_identical": identical,
                       "rounds": as_json(results), "summary": summary}, handle, indent=2)


if __name__ == "__main__":
    main()
