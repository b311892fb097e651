"""semantic_dedup: hand-written paraphrases among real prose are removed (MinHash misses them), the same decisions and
bytes on every executor and sharding, the ledger, exact arithmetic, the preview, the report and config errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydoc_data.topics import topics

import gristmill.stages.dedup.near_dedup  # noqa: F401  (registers near_dedup)
import gristmill.stages.dedup.semantic_dedup as semantic
import gristmill.stages.quality.embed  # noqa: F401  (registers embed)
from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.pipeline.reports.run_report import collect
from tests.conftest import data_files, run_cli
from tests.test_quality_bucket import write_dataset

PLUGINS = ("plugins: [gristmill.stages.quality.embed, gristmill.stages.dedup.near_dedup, "
           "gristmill.stages.dedup.semantic_dedup]\n")
THRESHOLD = 0.85  # each paraphrase below has a partner at 0.867 or more; the prose pairs reach 0.73 at most
PARAMS = f"{{threshold: {THRESHOLD}, clusters: 3}}"

# The same fact in other words: every group must end as one document.
PARAPHRASES = [
    ["The Eiffel Tower was finished in 1889 and stands on the Champ de Mars in Paris.",
     "Completed in 1889, the Eiffel Tower rises over the Champ de Mars in the French capital.",
     "Paris's Eiffel Tower, located on the Champ de Mars, was completed in the year 1889.",
     "Construction of the Eiffel Tower on Paris's Champ de Mars ended in 1889."],
    ["Water boils at 100 degrees Celsius at sea level.",
     "At sea level, the boiling point of water is one hundred degrees Celsius.",
     "At sea level, water starts to boil when it reaches 100 degrees Celsius."],
    ["Honeybees tell their hive mates where flowers are by performing a waggle dance.",
     "A honeybee shows the other bees of its hive where to find flowers by doing a waggle dance.",
     "With the waggle dance, honeybees inform their hive mates of where the flowers are."],
    ["The human heart pumps about five litres of blood through the body every minute.",
     "Every minute, the human heart pushes roughly five liters of blood around the body.",
     "Each minute, the heart of a human pumps around five litres of blood through the body."],
    ["Mount Everest, on the border of Nepal and China, is the highest mountain on Earth.",
     "The highest mountain on Earth is Mount Everest, which lies on the border between Nepal and China.",
     "Lying on the border between Nepal and China, Mount Everest is the highest mountain in the world."],
    ["Plants use sunlight to turn water and carbon dioxide into sugar and oxygen; this is photosynthesis.",
     "In photosynthesis, plants turn carbon dioxide and water into sugar and oxygen using the energy of sunlight.",
     "Photosynthesis is how plants make sugar and oxygen from water and carbon dioxide with the help of sunlight."],
]
DETAIL = re.compile(r"^survivor=(\S+) cosine=(0\.\d{4}|1\.0000)$")


def prose_paragraphs() -> list[str]:
    """Distinct paragraphs of the Python documentation's topics: real, unrelated to the facts above."""
    seen: dict[str, None] = {}
    for key in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[key]):
            block = " ".join(block.split())
            if 200 <= len(block) <= 700:
                seen.setdefault(block)
    return list(seen)[::7]


def corpus_rows() -> list[dict]:
    rows = [{"id": f"fact-{group}-{member}", "text": text, "source": "facts"}
            for group, texts in enumerate(PARAPHRASES) for member, text in enumerate(texts)]
    rows += [{"id": f"prose-{index:03d}", "text": text, "source": "pydoc"} for index, text in enumerate(prose_paragraphs())]
    rows.append({"id": "blank-000", "text": "   ", "source": "pydoc"})  # no tokens: a null embedding, kept
    order = np.random.default_rng(7).permutation(len(rows))  # paraphrases spread over the files
    return [rows[index] for index in order]


def run(tmp_path: Path, name: str, graph: str, executor: str = "inprocess", workers: int = 1) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(PLUGINS + "stages:\n" + graph)
    with make_executor(executor, workers) as pool:
        run_graph(load_graph(path, tmp_path / name), pool)
    return tmp_path / name


def semantic_graph(data: Path, params: str = PARAMS) -> str:
    return f"  sem:\n    stage: semantic_dedup\n    input: '{data}'\n    params: {params}\n"


def ledger(dataset: Dataset) -> dict[str, tuple[str, str]]:
    return {row["id"]: (row["reason"], row["detail"]) for batch in dataset.iter_rejects() for row in batch.to_pylist()}


def output_rows(dataset: Dataset) -> dict[str, int | None]:
    return {row["id"]: row["semantic_cluster"]
            for batch in dataset.iter_batches(columns=["id", "semantic_cluster"]) for row in batch.to_pylist()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """The corpus in three JSONL files, read and embedded once by the embed stage; the embedded rows also as
    datasets of one shard and of four."""
    root = tmp_path_factory.mktemp("semantic")
    rows = corpus_rows()
    for part in range(3):
        (root / "jsonl").mkdir(exist_ok=True)
        (root / "jsonl" / f"part{part}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[part::3]))
    run(root, "embedded", f"  read:\n    stage: read_text\n    params: {{paths: ['{root}/jsonl/*.jsonl']}}\n"
        "  embed:\n    stage: embed\n    input: read\n")
    table = pq.read_table(sorted((root / "embedded" / "embed").glob("part-*.parquet")))
    return {"read": root / "embedded" / "read", "embedded": root / "embedded" / "embed",
            "one": write_dataset(root / "one-shard", table, 1), "four": write_dataset(root / "four-shards", table, 4)}


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    return run(tmp_path_factory.mktemp("reference"), "run", semantic_graph(corpus["embedded"])) / "sem"


def test_paraphrases_are_removed_to_one_per_group_and_minhash_misses_them(corpus, reference, tmp_path) -> None:
    removed = ledger(Dataset(reference))
    kept = output_rows(Dataset(reference))
    for group, texts in enumerate(PARAPHRASES):
        members = [f"fact-{group}-{member}" for member in range(len(texts))]
        survivors = [member for member in members if member in kept]
        assert survivors == [members[0]]  # smallest_id survives
        for member in members[1:]:
            reason, detail = removed[member]
            survivor, cosine = DETAIL.match(detail).groups()
            assert reason == "semantic_duplicate" and survivor == members[0] and float(cosine) >= THRESHOLD
    assert set(removed) == {f"fact-{group}-{member}" for group, texts in enumerate(PARAPHRASES)
                            for member in range(1, len(texts))}  # no prose paragraph goes
    assert kept["blank-000"] is None and all(value is not None for key, value in kept.items() if key != "blank-000")
    assert Dataset(reference).manifest().schema.field("semantic_cluster").type == pa.int32()

    near = run(tmp_path, "near", f"  near:\n    stage: near_dedup\n    input: '{corpus['read']}'\n") / "near"
    assert ledger(Dataset(near)) == {}  # MinHash at its default threshold (0.8 Jaccard) sees no duplicate


def test_the_ledger_balances_and_every_survivor_is_kept(corpus, reference) -> None:
    dataset = Dataset(reference)
    for record in dataset.manifest().shards:
        assert record.rows_in == record.rows + record.rows_rejected
    removed, kept = ledger(dataset), output_rows(dataset)
    read = {row["id"] for batch in Dataset(corpus["embedded"]).iter_batches(columns=["id"]) for row in batch.to_pylist()}
    assert removed.keys().isdisjoint(kept) and removed.keys() | kept.keys() == read
    assert all(DETAIL.match(detail).group(1) in kept for _, detail in removed.values())


def test_same_bytes_on_two_workers_and_same_decisions_for_any_sharding(corpus, reference, tmp_path) -> None:
    pooled = run(tmp_path, "pooled", semantic_graph(corpus["embedded"]), "local", 2) / "sem"
    assert data_files(pooled) == data_files(reference)  # shards, ledgers and every reduce file
    decisions = ledger(Dataset(reference)), output_rows(Dataset(reference))
    for shards in ("one", "four"):
        other = Dataset(run(tmp_path, shards, semantic_graph(corpus[shards])) / "sem")
        assert (ledger(other), output_rows(other)) == decisions
    again = run(tmp_path, "again", semantic_graph(corpus["four"])) / "sem"
    assert data_files(again) == data_files(tmp_path / "four" / "sem")  # the same seed, the same bytes
    kmeans = json.loads((reference / "_work" / "semantic_dedup" / "kmeans.json").read_text())
    embedded = sum(value is not None for value in decisions[1].values()) + len(decisions[0])
    assert kmeans["clusters"] == 3 and kmeans["sample_documents"] == kmeans["embedded_documents"] == embedded


def test_the_report_shows_groups_and_removed_documents_beside_their_survivors(reference) -> None:
    sections = {section["title"]: section["statistics"] for section in collect(reference)["stage_sections"]}
    assert sections["Duplicate clusters: sem"]["removed"] == 13
    examples = sections["Semantic duplicates: sem"]["examples"]
    assert len(examples) == 5 and all(example["removed_text"] and example["survivor_text"] for example in examples)
    first_members = {f"fact-{group}-0": texts[0] for group, texts in enumerate(PARAPHRASES)}
    assert all(first_members[example["survivor_id"]].startswith(example["survivor_text"].rstrip("…"))
               for example in examples)


def test_the_preview_of_every_cluster_predicts_what_the_stage_removes(corpus, reference) -> None:
    result = run_cli("semantic-dedup-plan", "--input", str(corpus["four"]), "--thresholds", f"0.95,0.9,{THRESHOLD}",
                     "--sample", "1000", "--clusters", "3", "--json")
    preview = json.loads(result.stdout)
    assert preview["chosen_clusters"] == 3 and preview["chosen_documents"] == preview["embedded_documents"]
    assert preview["removed"][-1] == len(ledger(Dataset(reference)))
    assert preview["removed"][0] <= preview["removed"][1] <= preview["removed"][2]
    text = run_cli("semantic-dedup-plan", "--input", str(corpus["four"]), "--sample", "10", "--clusters", "3").stdout
    assert "whole clusters chosen at random" in text and "0.95" in text


def test_bad_configs_are_one_line_naming_the_field(corpus, tmp_path) -> None:
    result = run_cli("semantic-dedup", "--input", str(corpus["four"]), "--output", str(tmp_path / "a"),
                     "--threshold", "1.5", check=False)
    assert result.returncode == 2 and "--threshold" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = run_cli("semantic-dedup", "--input", str(corpus["read"]), "--output", str(tmp_path / "b"),
                     "--executor", "inprocess", check=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 1
    assert "embedding_column: the input has no column 'embedding'" in errors[0]
    result = run_cli("semantic-dedup-plan", "--input", str(corpus["read"]), check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: embedding_column: the input has no column 'embedding'")


# ---- the arithmetic, on synthetic vectors -----------------------------------------------------------------------


def unit_float16(count: int, dimension: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dimension))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)


def test_nearest_centroids_and_duplicate_groups_are_exact() -> None:
    rows = unit_float16(400, 24, 1)
    rows[200:260] = rows[:60]  # exact copies: cosine 1, and ties between equal centroids below
    centroids = np.concatenate([rows[:5], rows[:5]])  # every centroid twice: ties go to the smaller index
    exact = rows.astype(np.float64) @ centroids.astype(np.float64).T
    expected = np.argmax(2 * exact - (centroids.astype(np.float64) ** 2).sum(1), axis=1)
    assert np.array_equal(semantic.nearest_centroids(rows, centroids, block_bytes=64), expected)

    squares = (rows.astype(np.float64) ** 2).sum(1)
    cosines = rows.astype(np.float64) @ rows.astype(np.float64).T / np.sqrt(np.outer(squares, squares))
    np.fill_diagonal(cosines, -1)
    threshold = float(np.sort(cosines[cosines < 0.999].ravel())[-40])  # some pairs exactly at the threshold
    found = semantic.find_duplicates(rows, threshold, block_bytes=4 * 400 * 7)  # 7 rows a block, folded often
    parent = list(range(len(rows)))
    for a, b in zip(*np.nonzero(np.triu(cosines >= threshold, 1))):
        root_a, root_b = sorted((semantic_root(parent, a), semantic_root(parent, b)))
        parent[root_b] = root_a
    roots = [semantic_root(parent, index) for index in range(len(rows))]
    assert sorted(zip(found.members.tolist(), found.centres.tolist())) == [
        (index, root) for index, root in enumerate(roots) if root != index]
    best = np.fmax.reduce(np.where(cosines >= threshold, np.minimum(cosines, 1.0), np.nan), axis=1)
    assert np.array_equal(found.cosines, best, equal_nan=True)  # bit for bit


def semantic_root(parent: list[int], node: int) -> int:
    while parent[node] != node:
        node = parent[node]
    return node


def test_faiss_gives_the_same_centroids_with_any_thread_count() -> None:
    import faiss

    sample = unit_float16(3000, 32, 2)
    results = []
    for threads in (1, 2, 3):
        faiss.omp_set_num_threads(threads)
        results.append(semantic.train_centroids(sample, 20, 10, seed=5)[0].tobytes())
    assert results[0] == results[1] == results[2]


def test_clusters_read_a_few_row_groups_at_a_time_give_the_same_groups(tmp_path, monkeypatch) -> None:
    rows = unit_float16(600, 16, 3)
    rows[400:] = (rows[:200].astype(np.float32) + np.float32(0.02) * unit_float16(200, 16, 4)).astype(np.float16)
    rows = (rows / np.linalg.norm(rows.astype(np.float32), axis=1, keepdims=True)).astype(np.float16)
    table = pa.table({"id": [f"v-{index:04d}" for index in range(600)], "text": ["x"] * 600,
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel()), 16)})
    data = write_dataset(tmp_path / "vectors", table, 3)
    params = "{threshold: 0.99, clusters: 12}"
    whole = Dataset(run(tmp_path, "whole", semantic_graph(data, params)) / "sem")
    monkeypatch.setattr(semantic, "GROUP_DOCUMENTS", 40)  # several groups of clusters per partition...
    monkeypatch.setattr(semantic, "MEMBER_ROW_GROUP", 8)  # ...each read from a few row groups
    pieces = Dataset(run(tmp_path, "pieces", semantic_graph(data, params)) / "sem")
    assert len(ledger(whole)) >= 150 and (ledger(pieces), output_rows(pieces)) == (ledger(whole), output_rows(whole))
