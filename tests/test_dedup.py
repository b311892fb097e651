"""Exact and near dedup: components on hand-built graphs, survivor policies, modes, the sample's truth, determinism."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gristmill.stages.dedup.exact_dedup  # noqa: F401  (registers exact_dedup)
import gristmill.stages.dedup.near_dedup  # noqa: F401  (registers near_dedup)
from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.pipeline.demo.sample import write_sample
from gristmill.stages.dedup.components import connected_components
from tests.conftest import REPO, data_files, gristmill_env, run_cli

PLUGINS = "plugins: [gristmill.stages.dedup.exact_dedup, gristmill.stages.dedup.near_dedup]\n"


def run_inline(fn, items):
    return [fn(item) for item in items]


def node(shard: int, row: int) -> int:
    return shard << 32 | row


def components_of(tmp_path: Path, edges: list[tuple[int, int]], partitions: int, files: int = 2) -> dict[int, int]:
    edge_files = []
    for index in range(files):
        path = tmp_path / "edges" / f"part-{index:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        chunk = edges[index::files]
        pl.DataFrame({"a": [a for a, _ in chunk], "b": [b for _, b in chunk]},
                     schema={"a": pl.Int64, "b": pl.Int64}).write_parquet(path)
        edge_files.append(str(path))
    roots = connected_components(edge_files, tmp_path / f"components-{partitions}", partitions, run_inline)
    frame = pl.concat([pl.read_parquet(path) for path in roots])
    return dict(zip(frame["node"].to_list(), frame["root"].to_list()))


def union_find_roots(edges: list[tuple[int, int]]) -> dict[int, int]:
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in list(parent)}


def test_components_of_a_long_chain_a_star_and_disjoint_pairs(tmp_path: Path) -> None:
    chain = [node(i % 3, i) for i in range(300)]
    random.Random(1).shuffle(chain)  # the smallest node sits somewhere in the middle of the chain
    edges = list(zip(chain, chain[1:]))
    centre = node(2, 5000)
    edges += [(centre, node(shard, 6000 + leaf)) for shard in range(3) for leaf in range(20)]
    edges += [(node(1, 9000 + 2 * k), node(0, 9001 + 2 * k)) for k in range(10)]
    for partitions in (1, 3):
        roots = components_of(tmp_path, edges, partitions)
        assert {roots[x] for x in chain} == {min(chain)}
        assert {roots[node(shard, 6000 + leaf)] for shard in range(3) for leaf in range(20)} == {node(0, 6000)}
        assert roots[centre] == node(0, 6000)  # the centre is not the smallest member of its star
        assert all(roots[node(0, 9001 + 2 * k)] == node(0, 9001 + 2 * k) == roots[node(1, 9000 + 2 * k)]
                   for k in range(10))
        assert len(roots) == 300 + 61 + 20


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 30), st.integers(0, 2), st.integers(0, 30)), max_size=60),
       st.integers(1, 4))
def test_components_equal_union_find_on_random_graphs(tmp_path_factory, raw_edges, partitions) -> None:
    edges = [(node(s1, r1), node(s2, r2)) for s1, r1, s2, r2 in raw_edges if (s1, r1) != (s2, r2)]
    assert components_of(tmp_path_factory.mktemp("graph"), edges, partitions) == union_find_roots(edges)


BASE = ("millers along the river once ground every sack of grain that the farmers carried down from the hills "
        "and the whole village depended on the wheel turning through spring floods and summer droughts alike "
        "so the guild kept careful records of each delivery each payment and each repair to the great stones")


def edit(text: str, position: int, word: str) -> str:
    words = text.split()
    words[position] = word
    return " ".join(words)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def run_dedup(tmp_path: Path, corpus_glob: str, stage: str, params: str, executor=None) -> Dataset:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "g.yaml").write_text(
        PLUGINS + "stages:\n"
        + f"  read:\n    stage: read_text\n    params: {{paths: ['{corpus_glob}']}}\n"
        + f"  dedup:\n    stage: {stage}\n    input: read\n    params: {params}\n")
    with executor or make_executor("inprocess") as pool:
        run_graph(load_graph(tmp_path / "g.yaml", tmp_path / "run"), pool)
    return Dataset(tmp_path / "run" / "dedup")


def rejected(dataset: Dataset) -> dict[str, tuple[str, str]]:
    return {row["id"]: (row["reason"], row["detail"]) for batch in dataset.iter_rejects() for row in batch.to_pylist()}


def kept_ids(dataset: Dataset) -> set[str]:
    return {value for batch in dataset.iter_batches(columns=["id"]) for value in batch.column("id").to_pylist()}


CLUSTER = [  # one near-duplicate cluster: (id, text, lang_score, fetch_time)
    ("d3", edit(BASE, 10, "oats"), 0.9, "2024-03-01T00:00:00Z"),
    ("d4", edit(BASE, 40, "autumn"), 0.9, "2024-04-01T00:00:00Z"),
    ("d2", BASE + " and nothing else was ever written down", 0.1, "2024-02-01T00:00:00Z"),
    ("d5", BASE, 0.5, "2024-01-01T00:00:00Z"),
    ("d1", edit(BASE, 25, "ledger"), None, None),
]


@pytest.mark.parametrize("survivor,expected", [
    ("smallest_id", "d1"),
    ("highest:lang_score", "d3"),  # d3 and d4 tie at 0.9; the smaller id wins; d1's missing score loses
    ("longest", "d2"),
    ("earliest", "d5"),  # d1 has no fetch_time and loses
])
def test_each_survivor_policy_keeps_the_right_member(tmp_path: Path, survivor: str, expected: str) -> None:
    rows = [{"id": i, "text": t, "lang_score": s, "fetch_time": f} for i, t, s, f in CLUSTER]
    rows.append({"id": "d0", "text": "an unrelated note about tides and the harbour master's boats", "lang_score": 1.0})
    write_jsonl(tmp_path / "corpus" / "a.jsonl", rows[:3])
    write_jsonl(tmp_path / "corpus" / "b.jsonl", rows[3:])
    dataset = run_dedup(tmp_path, f"{tmp_path}/corpus/*.jsonl", "near_dedup", f"{{survivor: '{survivor}'}}")
    assert kept_ids(dataset) == {expected, "d0"}
    assert rejected(dataset) == {i: ("near_duplicate", expected) for i, *_ in CLUSTER if i != expected}
    removals = pl.read_parquet(dataset.path / "_work" / "near_dedup" / "removals" / "*.parquet")
    assert set(removals["cluster_id"]) == {"d1"}  # the cluster id is its smallest document id
    sizes = json.loads((dataset.path / "_work" / "near_dedup" / "cluster_sizes.json").read_text())
    assert sizes["sizes"] == {"5": 1} and sizes["removed"] == 4


def test_local_mode_deduplicates_only_within_a_source(tmp_path: Path) -> None:
    rows = [
        {"id": "a1", "text": BASE, "source": "crawl-a"},
        {"id": "a2", "text": edit(BASE, 5, "barley"), "source": "crawl-a"},
        {"id": "b1", "text": BASE, "source": "crawl-b"},
    ]
    write_jsonl(tmp_path / "corpus" / "x.jsonl", rows)
    for stage in ("near_dedup", "exact_dedup"):
        glob = f"{tmp_path}/corpus/*.jsonl"
        local = run_dedup(tmp_path / stage / "local", glob, stage, "{mode: local}")
        global_ = run_dedup(tmp_path / stage / "global", glob, stage, "{mode: global}")
        reason = stage.replace("_dedup", "_duplicate")
        if stage == "near_dedup":
            assert rejected(local) == {"a2": (reason, "a1")}
            assert rejected(global_) == {"a2": (reason, "a1"), "b1": (reason, "a1")}
        else:
            assert rejected(local) == {}
            assert rejected(global_) == {"b1": (reason, "a1")}


def test_exact_dedup_normalisation_is_configurable(tmp_path: Path) -> None:
    rows = [{"id": "x1", "text": "Hello,   World"}, {"id": "x2", "text": "hello, world\n"},
            {"id": "x3", "text": "hello world"}, {"id": "x4", "text": "hello there world"}]
    write_jsonl(tmp_path / "corpus" / "x.jsonl", rows)
    glob = f"{tmp_path}/corpus/*.jsonl"
    default = run_dedup(tmp_path / "default", glob, "exact_dedup", "{}")
    assert rejected(default) == {"x2": ("exact_duplicate", "x1")}
    loose = run_dedup(tmp_path / "loose", glob, "exact_dedup", "{strip_punctuation: true}")
    assert rejected(loose) == {"x2": ("exact_duplicate", "x1"), "x3": ("exact_duplicate", "x1")}
    strict = run_dedup(tmp_path / "strict", glob, "exact_dedup", "{lowercase: false, collapse_whitespace: false}")
    assert rejected(strict) == {}


def word_jaccard(a: str, b: str, n: int = 5) -> float:
    x, y = ({tuple(w[i:i + n]) for i in range(max(1, len(w) - n + 1))} for w in (a.lower().split(), b.lower().split()))
    return len(x & y) / len(x | y)


@pytest.fixture(scope="module")
def sample_pages(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    summary = write_sample(tmp_path_factory.mktemp("sample"), pages=400, seed=0)
    pages = {row["id"]: row for row in map(json.loads, summary.jsonl_path.read_text(encoding="utf-8").splitlines())}
    return summary.jsonl_path, pages


def test_the_samples_exact_and_near_duplicates_are_removed(tmp_path: Path, sample_pages) -> None:
    jsonl, pages = sample_pages
    (tmp_path / "g.yaml").write_text(
        PLUGINS + "stages:\n"
        + f"  read:\n    stage: read_text\n    params: {{paths: ['{jsonl}']}}\n"
        + "  exact:\n    stage: exact_dedup\n    input: read\n    params: {survivor: earliest}\n"
        + "  near:\n    stage: near_dedup\n    input: exact\n    params: {threshold: 0.6, survivor: earliest}\n")
    run_graph(load_graph(tmp_path / "g.yaml", tmp_path / "run"), make_executor("inprocess"))
    exact, near = (rejected(Dataset(tmp_path / "run" / name)) for name in ("exact", "near"))
    for page in pages.values():
        if page["kind"] == "exact_duplicate":
            assert exact[page["id"]] == ("exact_duplicate", page["duplicate_of"])
        if page["kind"] == "near_duplicate":  # the original is earlier, so it survives
            assert near[page["id"]] == ("near_duplicate", page["duplicate_of"])
    others = {i: detail for i, (_, detail) in {**exact, **near}.items() if not pages[i]["kind"].endswith("duplicate")}
    assert len(others) <= 4  # a few template-made pages (spam, low quality) do repeat each other
    for duplicate, survivor in others.items():
        assert word_jaccard(pages[duplicate]["text"], pages[survivor]["text"]) >= 0.5
    originals = {page["duplicate_of"] for page in pages.values() if page["duplicate_of"]}
    assert originals <= kept_ids(Dataset(tmp_path / "run" / "near"))


def write_noisy_corpus(directory: Path, files: int, docs_per_file: int, seed: int = 0) -> None:
    """Random-vocabulary documents where a third are edited or exact copies of earlier ones, across files."""
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    texts: list[str] = []
    for file_index in range(files):
        rows = []
        for doc_index in range(docs_per_file):
            if texts and rng.random() < 0.35:
                words = rng.choice(texts).split()
                for _ in range(rng.choice([0, 1, 2, 4])):
                    words[rng.randrange(len(words))] = rng.choice(vocabulary)
                text = " ".join(words)
            else:
                text = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(60, 200)))
            texts.append(text)
            rows.append({"id": f"n-{file_index}-{doc_index}", "text": text, "source": f"src{file_index % 2}",
                         "lang_score": round(rng.random(), 2)})
        write_jsonl(directory / f"f{file_index}.jsonl", rows)


def dedup_graph(tmp_path: Path, corpus: Path) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(
        PLUGINS + "stages:\n"
        + f"  read:\n    stage: read_text\n    params: {{paths: ['{corpus}/*.jsonl']}}\n"
        + "  exact:\n    stage: exact_dedup\n    input: read\n    params: {survivor: 'highest:lang_score'}\n"
        + "  near:\n    stage: near_dedup\n    input: exact\n    params: {survivor: longest}\n")
    return path


@pytest.mark.slow
def test_output_is_identical_with_1_2_and_4_workers_and_keeps_the_ledger(tmp_path: Path) -> None:
    write_noisy_corpus(tmp_path / "corpus", files=4, docs_per_file=100)
    graph_path = dedup_graph(tmp_path, tmp_path / "corpus")
    outputs = {}
    for kind, workers in [("inprocess", 1), ("local", 2), ("dask", 4)]:
        run = tmp_path / f"{kind}-{workers}"
        with make_executor(kind, workers) as executor:
            run_graph(load_graph(graph_path, run), executor)
        outputs[(kind, workers)] = data_files(run)
    first = outputs[("inprocess", 1)]
    assert all(files == first for files in outputs.values())
    run = tmp_path / "inprocess-1"
    near = Dataset(run / "near")
    for record in near.manifest().shards:
        assert record.rows_in == record.rows + record.rows_rejected
    removed = rejected(near)
    assert len(removed) > 30 and {reason for reason, _ in removed.values()} == {"near_duplicate"}
    survivors = kept_ids(near)
    assert all(survivor in survivors for _, survivor in removed.values())
    assert rejected(Dataset(run / "exact"))  # exact copies went first


@pytest.mark.slow
def test_sigkill_during_the_reduce_then_resume_gives_identical_bytes(tmp_path: Path) -> None:
    write_noisy_corpus(tmp_path / "corpus", files=4, docs_per_file=150, seed=3)
    graph_path = dedup_graph(tmp_path, tmp_path / "corpus")
    run_cli("run", str(graph_path), "--output", str(tmp_path / "clean"), "--executor", "inprocess")

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(graph_path), "--output", str(killed),
         "--executor", "local", "--workers", "2"],
        cwd=REPO, env=gristmill_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    work = killed / "near" / "_work" / "near_dedup"
    deadline = time.monotonic() + 120
    while not (work / "edges").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not Dataset(killed / "near").is_complete and not (work / "cluster_sizes.json").exists()

    run_cli("run", str(graph_path), "--output", str(killed), "--executor", "local", "--workers", "2")
    assert data_files(killed) == data_files(tmp_path / "clean")
    assert not [path for path in killed.rglob("*") if ".tmp-" in path.name]
