"""MinHash signatures bit-identical to datasketch, shingling and normalisation by hand, and the LSH banding plan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from datasketch import MinHash, MinHashLSH
from datasketch.lsh import _optimal_param
from hypothesis import given, settings
from hypothesis import strategies as st

from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.executors import InProcessExecutor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.stages.dedup.lsh import Banding, choose_banding, format_dedup_plan, plan_dedup
from gristmill.stages.dedup.minhash import MAX_HASH32, MinHasher, Normalization, Shingler, band_hashes, to_datasketch

TEXT = st.text(alphabet=st.sampled_from(list("abcAB  \n\t.,!'é") + ["ﬁ", "\u00a0", "ß", "İ", "Ⅻ", "—"]), max_size=80)


def datasketch_signature(shingler: Shingler, text: str, num_perm: int, seed: int) -> np.ndarray:
    sketch = MinHash(num_perm=num_perm, seed=seed, hashfunc=shingler.hash_shingle)
    sketch.update_batch(shingler.shingles(text))
    return sketch.hashvalues


@settings(max_examples=150, deadline=None)
@given(
    texts=st.lists(TEXT, min_size=1, max_size=12),
    kind=st.sampled_from(["word", "char"]),
    n=st.integers(1, 6),
    num_perm=st.sampled_from([1, 16, 128]),
    seed=st.integers(0, 2**32 - 1),
    lowercase=st.booleans(),
    strip_punctuation=st.booleans(),
)
def test_bulk_signatures_are_bit_identical_to_datasketch(texts, kind, n, num_perm, seed, lowercase, strip_punctuation):
    shingler = Shingler(kind, n, Normalization(lowercase=lowercase, strip_punctuation=strip_punctuation))
    signatures = MinHasher(num_perm, seed).signatures_of(pa.array(texts), shingler)
    assert signatures.dtype == np.uint32 and signatures.shape == (len(texts), num_perm)
    for text, signature in zip(texts, signatures):
        assert np.array_equal(signature, datasketch_signature(shingler, text, num_perm, seed))


def test_bit_identical_on_real_prose_across_chunk_boundaries(monkeypatch) -> None:
    from pydoc_data.topics import topics

    from gristmill.stages.dedup import minhash

    monkeypatch.setattr(minhash, "SHINGLES_PER_CHUNK", 500)  # force many chunks
    texts = [text[:3000] for text in sorted(topics.values())[:40]] + ["", None]
    shingler = Shingler()
    signatures = MinHasher(64, 42).signatures_of(pa.array(texts), shingler)
    for text, signature in zip(texts, signatures):
        assert np.array_equal(signature, datasketch_signature(shingler, text or "", 64, 42))


def test_permutations_are_datasketchs_affine32() -> None:
    a, b = MinHasher(128, 7).permutations
    reference = MinHash(num_perm=128, seed=7)
    assert reference.scheme == "affine32"
    assert np.array_equal(a, reference.permutations[0]) and np.array_equal(b, reference.permutations[1])


def test_normalisation_by_hand() -> None:
    texts = pa.array(["  Die ﬁnale   FASSUNG,\u00a0bitte! ", None, "Ⅻ…"])
    assert Normalization().apply(texts).to_pylist() == ["die finale fassung bitte", "", "xii"]
    assert Normalization(lowercase=False, strip_punctuation=False).apply(texts).to_pylist()[0] == "Die finale FASSUNG, bitte!"


def test_shingles_by_hand() -> None:
    shingler = Shingler("word", 2)
    assert shingler.shingles("The cat, the CAT sat.") == [b"the cat", b"cat the", b"the cat", b"cat sat"]
    assert shingler.shingles("Hello!") == [b"hello"]  # shorter than n: one shingle of everything
    assert shingler.shingles(" ... ") == []  # only punctuation: no shingles
    assert Shingler("char", 3).shingles("Abcd") == [b"abc", b"bcd"]
    hashes, offsets = shingler.hashes(pa.array(["The cat, the CAT sat.", "... !", "Hello!"]))
    assert offsets.tolist() == [0, 4, 4, 5]
    assert hashes[0] == hashes[2] != hashes[1]  # "the cat" twice
    assert hashes.tolist() == [shingler.hash_shingle(s) for s in [b"the cat", b"cat the", b"the cat", b"cat sat", b"hello"]]


def test_a_document_without_shingles_has_datasketchs_empty_signature() -> None:
    signature = MinHasher(16).signatures_of(pa.array(["?!", "words here"]), Shingler())
    assert (signature[0] == MAX_HASH32).all() and not (signature[1] == MAX_HASH32).all()
    assert MinHash(num_perm=16).is_empty() and np.array_equal(MinHash(num_perm=16).hashvalues, signature[0])


def test_exported_signatures_work_in_datasketch_lsh() -> None:
    base = "the river mill grinds grain into flour while farmers bring wheat from distant fields every single day"
    texts = [base, base.replace("distant", "nearby"), "completely different words about ships sailing the northern sea"]
    shingler = Shingler("word", 3)
    signatures = MinHasher(128, 3).signatures_of(pa.array(texts), shingler)
    index = MinHashLSH(threshold=0.5, num_perm=128)
    for key, signature in zip("abc", signatures):
        index.insert(key, to_datasketch(signature, seed=3))
    assert sorted(index.query(to_datasketch(signatures[0], seed=3))) == ["a", "b"]
    reference = MinHash(num_perm=128, seed=3, hashfunc=shingler.hash_shingle)
    reference.update_batch(shingler.shingles(texts[1]))
    assert to_datasketch(signatures[0], seed=3).jaccard(reference) == pytest.approx(
        np.mean(signatures[0] == signatures[1]))


def test_band_hashes_agree_only_on_equal_bands_and_salts_separate_sources() -> None:
    signatures = np.array([[1, 2, 3, 4], [1, 2, 9, 4], [1, 2, 3, 4]], np.uint32)
    bands = band_hashes(signatures, bands=2, rows=2)
    assert bands[0, 0] == bands[1, 0] == bands[2, 0] and bands[0, 1] != bands[1, 1]
    assert bands[0, 0] != bands[0, 1] or signatures[0, :2].tolist() != signatures[0, 2:].tolist()
    salted = band_hashes(signatures, 2, 2, salt=np.array([5, 5, 6], np.uint64))
    assert salted[0, 0] == salted[1, 0] != salted[2, 0]
    same_values = band_hashes(np.array([[7, 7, 7, 7]], np.uint32), 2, 2)
    assert same_values[0, 0] != same_values[0, 1]  # the band index is part of the key


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
@pytest.mark.parametrize("num_perm", [32, 128, 256])
@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.05, 0.95)])
def test_banding_matches_datasketch(threshold, num_perm, weights) -> None:
    banding = choose_banding(threshold, num_perm, *weights)
    assert (banding.bands, banding.rows) == _optimal_param(threshold, num_perm, *weights)


def test_s_curve_by_hand() -> None:
    assert Banding(2, 2).candidate_probability(0.5) == pytest.approx(1 - 0.75**2)
    assert choose_banding(0.8, 128) == Banding(9, 13)
    recall_first = choose_banding(0.8, 128, 0.05, 0.95)
    assert recall_first.candidate_probability(0.8) > 0.9 > Banding(9, 13).candidate_probability(0.8)


def test_plan_estimates_scale_with_rows() -> None:
    small, large = (plan_dedup(rows, 8, 0.8) for rows in (1_000_000, 10_000_000))
    assert large.band_bytes == 10 * small.band_bytes == 10 * 1_000_000 * small.banding.bands * 16
    assert small.signature_bytes == 1_000_000 * 128 * 4
    assert [round(s, 2) for s, _ in small.curve()] == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0]
    assert small.curve()[-1][1] == 1.0


def test_format_dedup_plan_reads_the_dataset(tmp_path: Path) -> None:
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "text": f"document {i}"}) + "\n" for i in range(50)))
    (tmp_path / "g.yaml").write_text(f"stages:\n  read:\n    stage: read_text\n    params: {{paths: ['{corpus}']}}\n")
    run_graph(load_graph(tmp_path / "g.yaml", tmp_path / "run"), InProcessExecutor())
    text = format_dedup_plan(tmp_path / "run" / "read", threshold=0.8)
    assert "50 documents in 1 shard(s)" in text
    assert "bands 16 x rows 8" in text  # the recall-first default weights
    assert "  0.80  0.9470" in text and "  1.00  1.0000" in text
    assert "expected peak memory per worker" in text and Dataset(tmp_path / "run" / "read").is_complete
