"""MinHash speed on one core: Gristmill's bulk numpy signatures against datasketch, fed the same shingles.

Run: python benchmarks/bench_minhash.py [--docs 10000] [--num-perm 128]
"""

from __future__ import annotations

import argparse
import os
import random
import time

import numpy as np
import pyarrow as pa
import xxhash
from datasketch import MinHash
from pydoc_data.topics import topics

from gristmill.stages.dedup.minhash import MinHasher, Shingler


def real_documents(count: int, words_per_doc: int = 284, seed: int = 0) -> list[str]:
    """Documents of ~284 words (~280 word 5-grams) cut from the standard library's pydoc topics."""
    words = " ".join(topics[key] for key in sorted(topics)).split()
    rng = random.Random(seed)
    starts = [rng.randrange(len(words) - words_per_doc) for _ in range(count)]
    return [" ".join(words[start:start + words_per_doc]) for start in starts]


def rate(label: str, documents: int, seconds: float, baseline: float | None = None) -> float:
    per_second = documents / seconds
    relative = f"  ({per_second / baseline:.1f}x update_batch sha1)" if baseline else ""
    print(f"{label:<58} {per_second:>10,.0f} docs/s{relative}")
    return per_second


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--slow-docs", type=int, default=2_000, help="documents for the slow datasketch paths")
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    pa.set_cpu_count(1)

    texts = real_documents(args.docs)
    shingler, hasher = Shingler(), MinHasher(args.num_perm)
    shingles = [shingler.shingles(text) for text in texts]
    print(f"{args.docs:,} documents, {np.mean([len(s) for s in shingles]):.0f} word 5-gram shingles each on average, "
          f"{args.num_perm} permutations, one core\n")
    slow = shingles[:args.slow_docs]

    def update_batch_sha1() -> None:
        for document in slow:
            MinHash(num_perm=args.num_perm).update_batch(document)

    baseline = rate("datasketch MinHash.update_batch (sha1)", len(slow), timed(update_batch_sha1))
    rate("datasketch MinHash.bulk (sha1)", len(slow), timed(lambda: MinHash.bulk(slow, num_perm=args.num_perm)), baseline)
    rate("datasketch MinHash.bulk (xxh32 of the shingle bytes)", len(slow),
         timed(lambda: MinHash.bulk(slow, num_perm=args.num_perm, hashfunc=xxhash.xxh32_intdigest)), baseline)
    rate("datasketch MinHash.bulk (Gristmill's shingle hash H)", len(slow),
         timed(lambda: MinHash.bulk(slow, num_perm=args.num_perm, hashfunc=shingler.hash_shingle)), baseline)

    hashes, offsets = shingler.hashes(pa.array(texts))
    rate("gristmill MinHasher.signatures (from shingle hashes)", len(texts),
         timed(lambda: hasher.signatures(hashes, offsets)), baseline)
    rate("gristmill from raw text (normalise, shingle, hash, sign)", len(texts),
         timed(lambda: hasher.signatures_of(pa.array(texts), shingler)), baseline)

    reference = MinHash.bulk(slow[:200], num_perm=args.num_perm, hashfunc=shingler.hash_shingle)
    ours = hasher.signatures(*shingler.hashes(pa.array(texts[:200])))
    assert all(np.array_equal(r.hashvalues, s) for r, s in zip(reference, ours)), "signatures differ from datasketch"
    print("\nbit-identical to datasketch (affine32) on the first 200 documents: yes")


if __name__ == "__main__":
    main()
