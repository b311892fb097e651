"""The side-by-side benchmarks are fair: same documents and same work for every contender, alternating rounds,
and a headline that is the median of per-round ratios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def benchmarks_on_path(monkeypatch):
    """The benchmark scripts import their neighbours by module name, as they do when run as scripts."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))


def test_rounds_rotate_who_goes_first(benchmarks_on_path):
    from rounds import run_rounds

    calls = []
    contenders = {name: (lambda name=name: calls.append(name)) for name in ("first", "second", "third")}
    results = run_rounds(contenders, 3)
    assert [list(round_) for round_ in results] == [["first", "second", "third"], ["second", "third", "first"],
                                                    ["third", "first", "second"]]
    assert calls == [name for round_ in results for name in round_]


def test_speedup_is_the_median_of_per_round_ratios_not_a_ratio_of_medians(benchmarks_on_path):
    from rounds import Timing, summarise

    seconds = [(1.0, 3.0), (10.0, 20.0), (2.0, 2.0)]  # per-round ratios 3, 2, 1; medians 2 and 3
    results = [{"ours": Timing(ours, ours), "theirs": Timing(theirs, theirs)} for ours, theirs in seconds]
    summary = summarise(results, work=100, subject="ours")
    assert summary["speedups"]["theirs"]["median"] == 2.0
    assert summary["speedups"]["theirs"]["range"] == [1.0, 3.0]
    assert "ours" not in summary["speedups"]
    assert summary["rates"]["ours"]["median"] == 50.0  # 100 documents in a median 2 s
    assert summary["rates"]["theirs"]["range"] == [5.0, 50.0]


def test_every_minhash_contender_signs_the_same_raw_texts(benchmarks_on_path):
    from bench_minhash import SUBJECT, contenders, real_documents

    texts = real_documents(40)
    signatures = {name: run() for name, run in contenders(texts, num_perm=32).items()}
    assert {name: len(result) for name, result in signatures.items()} == {name: 40 for name in signatures}
    ours = signatures[SUBJECT]
    theirs = np.stack([minhash.hashvalues for minhash in signatures["datasketch bulk (Gristmill's H)"]])
    assert np.array_equal(ours, theirs)
    # Given the texts in another order, every contender answers in that order: each one hashes what it is given.
    reversed_runs = contenders(texts[::-1], num_perm=32)
    for name, run in reversed_runs.items():
        first, last = (getattr(value, "hashvalues", value) for value in (run()[0], signatures[name][-1]))
        assert np.array_equal(first, last), name


def test_bench_minhash_runs_alternating_rounds(tmp_path):
    output = tmp_path / "minhash.json"
    subprocess.run([sys.executable, str(BENCHMARKS / "bench_minhash.py"), "--docs", "30", "--rounds", "2",
                    "--num-perm", "16", "--json", str(output)], check=True, capture_output=True)
    report = json.loads(output.read_text())
    assert report["bit_identical"] is True
    first, second = (list(round_) for round_ in report["rounds"])
    assert sorted(first) == sorted(second) and first != second and second[-1] == first[0]
    assert set(report["summary"]["speedups"]) == set(first) - {"gristmill signatures_of"}
