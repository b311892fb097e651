"""The side-by-side benchmarks are fair: same documents and same work for every contender, alternating rounds,
and a headline that is the median of per-round ratios."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

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


def _documentation_tree(share: Path) -> None:
    """A tiny stand-in for the Debian documentation packages: English pages of pydoc prose, two translations."""
    from pydoc_data.topics import topics

    paragraphs = [" ".join(p.split()) for key in sorted(topics) for p in topics[key].split("\n\n")
                  if len(p.split()) > 40]
    english = {
        "debian-reference": ["ch01.en.html", "ch02.en.html"],
        "doc/debian-handbook/html/en-US": ["apt.html", "sect.backup.html"],
        "doc/python3.11/html/library": [f"module{i}.html" for i in range(16)],
        "doc/git-doc": [f"git-command{i}.html" for i in range(8)],
        "doc/postgresql-doc-15/html": [f"sql-statement{i}.html" for i in range(12)],
    }
    for index, (directory, name) in enumerate((d, n) for d, names in english.items() for n in names):
        body = "".join(f"<p>{p}</p>" for p in paragraphs[index * 4:index * 4 + 4])
        page = f"<html><head><title>Page {index}</title></head><body><h1>Page {index}</h1>{body}</body></html>"
        (share / directory).mkdir(parents=True, exist_ok=True)
        (share / directory / name).write_text(page)
    (share / "doc/python3.11/html/whatsnew").mkdir(parents=True)
    (share / "doc/python3.11/html/whatsnew/changelog.html.gz").write_bytes(
        gzip.compress(f"<html><body><p>{paragraphs[-1]}</p></body></html>".encode()))
    french = "Le paquet est installé avec apt et la configuration reste dans le répertoire du système. " * 30
    german = "Das Paket wird mit apt installiert und die Konfiguration bleibt im Verzeichnis des Systems. " * 30
    (share / "debian-reference/ch01.fr.html").write_text(f"<html><body><p>{french}</p></body></html>")
    (share / "debian-reference/ch01.de.html").write_text(f"<html><body><p>{german}</p></body></html>")
    (share / "doc/debian-handbook/html/fr-FR").mkdir(parents=True)
    (share / "doc/debian-handbook/html/fr-FR/apt.html").write_text(f"<html><body><p>{french}</p></body></html>")


def test_ablation_corpus_is_reproducible_and_keeps_its_pools_apart(benchmarks_on_path, tmp_path):
    from ablation_debian import KIND_SHARES, build_corpus, plan_counts, write_configs
    from gristmill.pipeline.engine.documents import document_id
    from warcio.archiveiterator import ArchiveIterator

    share = tmp_path / "share"
    _documentation_tree(share)
    summary = build_corpus(tmp_path / "a", seed=3, pages=24, share_dir=share, workers=1)
    assert summary["kinds"] == {kind: n for kind, n in sorted(plan_counts(24, KIND_SHARES).items()) if n}
    pages = [json.loads(line) for line in (tmp_path / "a/pages.jsonl").read_text().splitlines()]
    with open(tmp_path / "a/crawl.warc.gz", "rb") as fh:
        responses = [record.rec_headers.get_header("WARC-Record-ID") for record in ArchiveIterator(fh)
                     if record.rec_type == "response"]
    assert [page["id"] for page in pages] == [document_id(record) for record in responses]

    crawl = {page["url"] for page in pages} | {page["duplicate_of"] for page in pages if page["duplicate_of"]}
    train = [json.loads(line) for line in (tmp_path / "a/quality_train.jsonl").read_text().splitlines()]
    positives = {row["url"] for row in train if row["label"] == "good"}
    reference = {json.loads(line)["id"] for line in (tmp_path / "a/reference.jsonl").read_text().splitlines()}
    assert positives and reference and {row["label"] for row in train} == {"good", "bad"}
    assert not crawl & positives and not crawl & reference and not positives & reference
    assert {page["lang"] for page in pages if page["kind"] == "non_english"} <= {"fr", "de"}

    build_corpus(tmp_path / "b", seed=3, pages=24, share_dir=share, workers=1)
    for name in ("crawl.warc.gz", "pages.jsonl", "quality_train.jsonl", "reference.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    nodes = write_configs(tmp_path / "a")
    ablation = yaml.safe_load((tmp_path / "a/ablation.yaml").read_text())
    variants = ablation["variants"]
    named = [*variants["cumulative"], *variants["leave_one_out"], variants["threshold"]["quality"]["node"],
             ablation["recipe"]["source"], ablation["recipe"]["final"]]
    assert set(named) <= set(nodes) == set(yaml.safe_load((tmp_path / "a/recipe.yaml").read_text())["stages"])


def test_ablation_corpus_names_the_apt_command_when_the_docs_are_missing(benchmarks_on_path, tmp_path, capsys):
    from ablation_debian import APT_COMMAND, main

    assert main(["--output", str(tmp_path / "out"), "--share-dir", str(tmp_path), "--no-run"]) == 2
    assert capsys.readouterr().out.strip().endswith(APT_COMMAND)
