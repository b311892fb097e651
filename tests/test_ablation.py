"""`gristmill ablate` end to end on real English text (the standard library's pydoc topics): leave-one-out is the
recipe without the node, the held-out slice never reaches training data, every run trains the same tokens, a killed
ablation resumes to the same numbers, planted junk ranks below clean text, and config errors are one line."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
import yaml
from click.testing import CliRunner
from pydantic import Field
from pydoc_data.topics import topics

from gristmill.pipeline.cli.main import cli
from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.executors import InProcessExecutor
from gristmill.pipeline.engine.graph import GraphSpec, build_graph, load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.pipeline.engine.stage import BatchResult, MapStage, StageConfig, register
from gristmill.stages.filters.exclude import text_hash
from gristmill.trainer.ablation import plan_variants, run_ablation, slice_key
from gristmill.trainer.ablation_config import load_ablation
from tests.conftest import REPO, gristmill_env

# Gopher's alphabetic-word rule at its default (0.8) rejects nearly all the documentation (code samples);
# at 0.7 it keeps about a third.
QUALITY_PARAMS = {"min_alpha_words_ratio": 0.7}
# A tiny model on CPU: few steps of few tokens.
PROXY = {"model": "tiny", "seq_len": 64, "tokens_per_step": 2048, "min_bucket": 3,
         "training": {"learning_rate": 0.003, "warmup_steps": 2}}


def documentation_texts(min_words: int = 120) -> list[str]:
    """pydoc topics as documents of consecutive paragraphs, each at least `min_words` words (a topic's short
    remainder of 30 words or more is a document too): 459 documents, about 65,000 words."""
    texts = []
    for name in sorted(topics):
        paragraphs: list[str] = []
        for paragraph in re.split(r"\n\s*\n", topics[name]):
            if paragraph := " ".join(paragraph.split()):
                paragraphs.append(paragraph)
            if sum(len(item.split()) for item in paragraphs) >= min_words:
                texts.append("\n\n".join(paragraphs))
                paragraphs = []
        if sum(len(item.split()) for item in paragraphs) >= 30:
            texts.append("\n\n".join(paragraphs))
    return texts


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def documentation_rows(count: int | None = None, duplicates: int = 0) -> list[dict]:
    """The first `count` documents as `doc-NNNN`, then exact copies of the first `duplicates` of them as `dup-NNNN`
    (exact_dedup keeps the smallest id: the original)."""
    texts = documentation_texts()[:count]
    rows = [{"id": f"doc-{index:04d}", "text": text} for index, text in enumerate(texts)]
    return rows + [{"id": f"dup-{index:04d}", "text": texts[index]} for index in range(duplicates)]


def recipe_stages(corpus: Path) -> dict:
    """read_text → length_filter → exact_dedup → gopher_quality; quality's input is spelled as a list."""
    return {
        "read": {"stage": "read_text", "params": {"paths": [str(corpus)]}},
        "long": {"stage": "length_filter", "input": "read", "params": {"min_words": 40}},
        "dedup": {"stage": "exact_dedup", "input": "long"},
        "quality": {"stage": "gopher_quality", "input": ["dedup"], "params": QUALITY_PARAMS},
    }


def ablation_config(stages: dict, proxy: dict, variants: dict, name: str = "ablation") -> dict:
    return {"name": name, "recipe": {"stages": stages}, "tokenizer": {"train": {"vocab_size": 512}},
            "heldout": {"slice": {"fraction": 0.15, "max_documents": 40}}, "proxy": proxy, "variants": variants}


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def documents_of(path: Path) -> list[tuple[str, str]]:
    """A dataset's (id, text) rows, sorted."""
    return sorted((document_id, text) for batch in Dataset(path).iter_batches(columns=["id", "text"])
                  for document_id, text in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist()))


@pytest.fixture
def one_torch_thread():
    """Proxy runs in this process use one torch thread, as the subprocess runs do through OMP_NUM_THREADS: on two
    busy cores, two threads per run thrash (a tiny model's step took 2.6 s instead of 0.13 s)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_leave_one_out_equals_a_hand_built_graph(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", documentation_rows(200, duplicates=20))
    config_path = write_yaml(tmp_path / "ablation.yaml", ablation_config(
        recipe_stages(corpus), {"tokens": 4096, **PROXY}, {"raw": True, "leave_one_out": ["dedup", "quality"]}))
    output = tmp_path / "ablation"
    config, recipe = load_ablation(config_path, output)
    executor = InProcessExecutor()
    run_graph(build_graph(recipe.spec, recipe.where, recipe.output, recipe.config_dir), executor)
    variants = {variant.name: variant for variant in plan_variants(config, recipe, output)}
    assert list(variants) == ["raw", "full", "without-dedup", "without-quality"]
    full = documents_of(variants["full"].documents.path)

    for left_out, kept in [("dedup", ["read", "long", "quality"]), ("quality", ["read", "long", "dedup"])]:
        variant = variants[f"without-{left_out}"]
        if variant.documents.graph is not None:
            run_graph(variant.documents.graph, executor)
        stages = {name: dict(recipe_stages(corpus)[name]) for name in kept}
        for previous, name in zip(kept, kept[1:]):
            stages[name]["input"] = previous
        graph_path = tmp_path / f"without-{left_out}.yaml"
        graph_path.write_text(yaml.safe_dump({"name": f"hand-built-{left_out}", "stages": stages}))
        hand_built = load_graph(graph_path, tmp_path / f"hand-built-{left_out}")
        run_graph(hand_built, executor)
        expected = documents_of(hand_built.output / kept[-1])
        assert documents_of(variant.documents.path) == expected, left_out
        assert expected != full and len(expected) > len(full), left_out  # the left-out node did remove documents
    # the left-out final node needs no graph: the variant is the recipe's own output before it
    assert variants["without-quality"].documents.graph is None
    assert variants["without-quality"].documents.path == recipe.output / "dedup"
    deduplicated = {row["id"] for batch in Dataset(recipe.output / "dedup").iter_rejects() for row in batch.to_pylist()}
    assert deduplicated >= {f"dup-{index:04d}" for index in range(20)}  # the planted copies, and the docs' own


CONFIG_ERRORS = {
    "unknown-node-in-cumulative": ("variants", {"cumulative": ["long", "nowhere"]},
                                   "variants.cumulative[1]: 'nowhere' is not a node of the recipe"),
    "source-left-out": ("variants", {"leave_one_out": ["read"]}, "variants.leave_one_out[0]: 'read' is a source stage"),
    "graph-and-stages": ("recipe", {"graph": "recipe.yaml"},
                         "recipe: Value error, give the recipe as `graph: PATH` or inline `stages:`, not both"),
    "seq-len-not-a-power-of-two": ("proxy", {"seq_len": 96}, "proxy: Value error, seq_len must be a power of two"),
    "unknown-field": ("proxy", {"tokens_per_stepp": 4096}, "proxy.tokens_per_stepp: unknown field"),
    "balance-power-out-of-range": ("variants", {"balance": [{"column": "semantic_cluster", "power": 2}]},
                                   "variants.balance[0].power: Input should be less than or equal to 1, got 2"),
}


@pytest.mark.parametrize(("section", "change", "message"), CONFIG_ERRORS.values(), ids=CONFIG_ERRORS.keys())
def test_config_errors_are_one_line_naming_the_field(tmp_path: Path, section: str, change: dict, message: str) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", documentation_rows(5))
    config = ablation_config(recipe_stages(corpus), {"tokens": 4096, **PROXY}, {})
    config[section] = config[section] | change
    config_path = write_yaml(tmp_path / "ablation.yaml", config)
    result = CliRunner().invoke(cli, ["ablate", str(config_path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {config_path}: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out" / "recipe").exists()  # nothing ran


def test_a_missing_recipe_input_is_one_line(tmp_path: Path) -> None:
    config = ablation_config(recipe_stages(tmp_path / "absent.jsonl"), {"tokens": 4096, **PROXY}, {})
    config_path = write_yaml(tmp_path / "ablation.yaml", config)
    result = CliRunner().invoke(cli, ["ablate", str(config_path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    # one line, not a traceback (the progress display leaves a blank line before it)
    assert result.stderr.strip() == f"error: ablation: read: input {tmp_path / 'absent.jsonl'}: no such file"


# 250 documents, 15 planted duplicates and a copy of a slice document: the full recipe keeps fewer tokens than a
# run trains on (it repeats), raw more (it does not).
BUDGET = {"tokens": 65536, "seeds": [0], **PROXY}
COPY_ID = "zzz-copy"  # sorts after `doc-`, so exact_dedup keeps the original and drops the copy


def slice_candidate(rows: list[dict], stages: dict, directory: Path) -> dict:
    """A document the held-out slice will hold: of those the recipe keeps, the one with the smallest seeded id
    hash (the slice takes the smallest)."""
    recipe = build_graph(GraphSpec(name="survivors", stages=stages), "survivors", directory)
    run_graph(recipe, InProcessExecutor())
    kept = {document_id for document_id, _ in documents_of(directory / recipe.nodes[-1].name)}
    return min((row for row in rows if row["id"] in kept), key=lambda row: slice_key(row["id"], 0))


@pytest.fixture(scope="module")
def ablation(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One ablation, run here with one torch thread: raw, full and without exact_dedup, one seed."""
    import torch

    directory = tmp_path_factory.mktemp("ablation")
    rows = documentation_rows(250, duplicates=15)
    corpus = write_jsonl(directory / "corpus.jsonl", rows)
    copied = slice_candidate(rows, recipe_stages(corpus), directory / "survivors")
    write_jsonl(corpus, rows + [{"id": COPY_ID, "text": copied["text"]}])
    config_path = write_yaml(directory / "ablation.yaml", ablation_config(
        recipe_stages(corpus), BUDGET, {"raw": True, "leave_one_out": ["dedup"]}))
    output = directory / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    try:
        summary = run_ablation(*load_ablation(config_path, output), output=output)
    finally:
        torch.set_num_threads(threads)
    print(f"ablation: {time.perf_counter() - started:.1f} s")
    return {"config": config_path, "output": output, "summary": summary, "copied": copied}


def id_columns(schema_names: list[str]) -> list[str]:
    return [name for name in ("id", "document_id") if name in schema_names]


def leaked(directory: Path, ids: set[str], hashes: set[str]) -> set[str]:
    """Held-out ids and text hashes found in any dataset (documents, tokens, decompose) or export index below
    `directory`."""
    found: set[str] = set()
    for manifest in directory.rglob("_manifest.json"):
        dataset = Dataset(manifest.parent)
        names = dataset.schema().names
        assert id_columns(names), f"{manifest.parent} has no id column to check"
        for batch in dataset.iter_batches(columns=id_columns(names) + ["text"] * ("text" in names)):
            for column in id_columns(names):
                found |= ids & set(batch.column(column).to_pylist())
            if "text" in names:
                found |= hashes & {text_hash(text) for text in batch.column("text").to_pylist()}
    for sequences in directory.rglob("*.sequences.parquet"):
        found |= ids & set(pq.read_table(sequences, columns=["document_id"]).column(0).to_pylist())
    return found


def test_heldout_slice_never_reaches_training_data(ablation: dict) -> None:
    output, copied = ablation["output"], ablation["copied"]
    held = pq.read_table(output / "heldout" / "slice.parquet")
    ids = set(held.column("id").to_pylist())
    hashes = {text_hash(text) for text in held.column("text").to_pylist()}
    assert copied["id"] in ids and 5 <= len(ids) <= 40  # the copy's original is held out
    raw = output / "recipe" / "read"
    assert leaked(raw, ids, hashes) == ids | hashes  # the check sees every held-out document in the raw data

    data = sorted(path for path in (output / "data").iterdir() if path.is_dir())
    assert [path.name for path in data] == ["recipe-quality", "recipe-read", "without-dedup"]
    for directory in data:
        assert {path.name for path in directory.iterdir() if path.is_dir()} >= {"documents", "tokens", "dd",
                                                                                 "export-dd"}
        assert leaked(directory, ids, hashes) == set(), directory.name
    # The exclude stage's ledger names each held-out id, and a held-out text under another id (the planted copy,
    # and the documentation's own repeats) by its text.
    inputs = {"recipe-read": raw, "recipe-quality": output / "recipe" / "quality",
              "without-dedup": output / "variants" / "without-dedup" / "quality"}
    for key, source in inputs.items():
        expected = {document_id: "listed_id" if document_id in ids else "listed_text"
                    for document_id, text in documents_of(source) if document_id in ids or text_hash(text) in hashes}
        rejects = {row["id"]: row["reason"] for batch in Dataset(output / "data" / key / "documents").iter_rejects()
                   for row in batch.to_pylist()}
        assert rejects == expected, key
        assert set(ids) <= set(rejects) and (COPY_ID in rejects) == (key != "recipe-quality"), key
    entries = {entry["name"]: entry for entry in ablation["summary"]["variants"]}
    assert entries["raw"]["heldout_excluded"] > entries["full"]["heldout_excluded"] == len(ids)


def test_every_run_trains_the_same_tokens(ablation: dict) -> None:
    output = ablation["output"]
    summary = json.loads((output / "ablation.json").read_text())
    assert summary["variants"] == json.loads(json.dumps(ablation["summary"]["variants"]))
    budget = summary["steps"] * summary["tokens_per_step"]
    assert summary["tokens_per_run"] == budget == BUDGET["tokens"]
    results = [json.loads(path.read_text()) for path in sorted((output / "runs").glob("*/seed-*/result.json"))]
    assert len(results) == 3
    assert {result["tokens_trained"] for result in results} == {budget}
    assert {result["steps"] for result in results} == {summary["steps"]}
    epochs = {}
    for entry in summary["variants"]:
        assert entry["tokens_trained"] == budget, entry["name"]
        assert entry["epochs"] == budget / entry["unique_tokens"], entry["name"]
        epochs[entry["name"]] = entry["epochs"]
    # sizes differ enough that the full recipe repeats its data and raw does not
    assert epochs["full"] > 1.2 and epochs["raw"] < 0.9, epochs
    assert epochs["without-dedup"] < epochs["full"]


def ablate_command(config: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "gristmill.pipeline", "ablate", str(config), "--output", str(output)]


def one_thread_env() -> dict[str, str]:
    return gristmill_env() | {"OMP_NUM_THREADS": "1"}


def scores_per_seed(summary: dict) -> dict[str, dict]:
    return {entry["name"]: {name: scores["per_seed"] for name, scores in entry["bits_per_byte"].items()}
            for entry in summary["variants"]}


def test_killed_ablation_resumes_to_the_same_numbers(ablation: dict, tmp_path: Path) -> None:
    output = tmp_path / "killed"
    process = subprocess.Popen(ablate_command(ablation["config"], output), cwd=REPO, env=one_thread_env(),
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((output / "runs").glob("*/seed-*/checkpoint.pt")):
        assert process.poll() is None, "the ablation ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (output / "ablation.json").exists()
    interrupted = [path.parent for path in (output / "runs").glob("*/seed-*/checkpoint.pt")
                   if not (path.parent / "result.json").exists()]
    assert interrupted  # a run was killed halfway and resumes from its checkpoint

    resumed = subprocess.run(ablate_command(ablation["config"], output), cwd=REPO, env=one_thread_env(),
                             capture_output=True, text=True, check=False)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((output / "ablation.json").read_text())
    assert scores_per_seed(summary) == scores_per_seed(ablation["summary"])  # exactly: the run in this process
    assert [entry["unique_tokens"] for entry in summary["variants"]] == \
        [entry["unique_tokens"] for entry in ablation["summary"]["variants"]]


def shuffled_words(text: str, rng: random.Random) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def test_planted_junk_ranks_below_clean_text(tmp_path: Path, one_torch_thread: None) -> None:
    """30% of documents are real documents with their words shuffled; the recipe removes exactly those (`exclude`
    standing in for a perfect filter). Concat batching at 128 tokens and a 2048-token vocabulary make word order
    most of what the tiny model learns in 96 steps: the full recipe beats raw on every seed (on a 2-core CPU the
    raw-minus-full margin is 0.02 to 0.1 bits per byte over junk draws and seed pairs; ~1 minute)."""
    rng = random.Random(0)
    clean = documentation_rows()
    junk = [{"id": f"junk-{index:04d}", "text": shuffled_words(rng.choice(clean)["text"], rng)}
            for index in range(round(len(clean) * 0.3 / 0.7))]
    mixed = clean + junk
    rng.shuffle(mixed)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", mixed)
    junk_list = write_jsonl(tmp_path / "junk.jsonl", [{"id": row["id"]} for row in junk])
    stages = {"read": {"stage": "read_text", "params": {"paths": [str(corpus)]}},
              "clean": {"stage": "exclude", "input": "read", "params": {"list": str(junk_list)}}}
    proxy = {"model": "tiny", "tokens": 196_608, "seeds": [0, 1], "seq_len": 128, "tokens_per_step": 2048,
             "batching": "concat", "training": {"learning_rate": 0.003, "warmup_steps": 2}}
    config = ablation_config(stages, proxy, {"raw": True}, name="junk")
    config["tokenizer"]["train"]["vocab_size"] = 2048
    config_path = write_yaml(tmp_path / "ablation.yaml", config)
    output = tmp_path / "out"

    summary = run_ablation(*load_ablation(config_path, output), output=output)
    print("seconds:", {name: round(value, 1) for name, value in summary["seconds"].items()})
    raw, full = summary["variants"]
    print({entry["name"]: entry["target_bits_per_byte"]["per_seed"] for entry in (raw, full)})
    held = set(pq.read_table(output / "heldout" / "slice.parquet", columns=["id"]).column(0).to_pylist())
    assert held and not any(document_id.startswith("junk-") for document_id in held)
    assert raw["documents"] + raw["heldout_excluded"] == len(mixed)
    assert full["documents"] + full["heldout_excluded"] == len(clean)
    assert full["target_bits_per_byte"]["mean"] < raw["target_bits_per_byte"]["mean"]
    against_raw = full["comparisons"]["raw"]
    assert against_raw["against"] == "raw" and against_raw["delta"] < 0 and against_raw["separated"], against_raw


class GroupConfig(StageConfig):
    column: str = Field("semantic_cluster", description="The int16 group column to add.")


@register
class GroupByIdHash(MapStage):
    """Adds an uneven integer group, as semantic_dedup adds `semantic_cluster`: of 20 id-hash slots, 16 are group
    0, 3 group 1 and 1 group 2."""

    name = "test_group_by_id_hash"
    Config = GroupConfig

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return input_schema.append(pa.field(self.config.column, pa.int16()))

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        slots = [xxhash.xxh3_64_intdigest(document_id.encode()) % 20 for document_id in batch.column("id").to_pylist()]
        groups = pa.array([0 if slot < 16 else 1 if slot < 19 else 2 for slot in slots], pa.int16())
        return BatchResult.keep_all(batch.append_column(self.config.column, groups))


def test_balance_variant_trains_from_a_cluster_balanced_plan(tmp_path: Path, one_torch_thread: None) -> None:
    """A balance variant compiles one plan over the final export, with the run's budget, whose per-group tokens
    follow n ** power; it trains from that plan and is compared with the full recipe; a bad column is one line."""
    corpus = write_jsonl(tmp_path / "corpus.jsonl", documentation_rows(120))
    stages = {"read": {"stage": "read_text", "params": {"paths": [str(corpus)]}},
              "clusters": {"stage": "test_group_by_id_hash", "input": "read"}}
    balance = {"column": "semantic_cluster", "power": 0.5, "max_repeats": 8}
    config = ablation_config(stages, {"tokens": 16384, "seeds": [0], **PROXY}, {"raw": False, "balance": [balance]})
    config_path = write_yaml(tmp_path / "ablation.yaml", config)
    output = tmp_path / "out"

    summary = run_ablation(*load_ablation(config_path, output), output=output)
    entries = {entry["name"]: entry for entry in summary["variants"]}
    assert list(entries) == ["full", "balance-semantic_cluster-p0.5-r8"]
    balanced = entries["balance-semantic_cluster-p0.5-r8"]
    assert balanced["label"] == "balance semantic_cluster power 0.5" and balanced["family"] == "balance"
    assert balanced["tokens_trained"] == entries["full"]["tokens_trained"] == summary["tokens_per_run"]
    comparison = balanced["comparisons"]["full"]
    assert comparison["against"] == "full" and comparison["token_share"] == 1.0
    assert any(line.startswith("balance semantic_cluster power 0.5 against full recipe")
               for line in summary["findings"])

    plan_dir = output / "plans" / balanced["name"]
    run = json.loads((output / "runs" / "recipe-clusters.dd.balance-semantic_cluster-p0.5-r8" / "seed-0"
                      / "metrics.json").read_text())
    assert run["config"]["plan"] == str(plan_dir) and not run["config"]["data"]
    header = json.loads((plan_dir / "plan.json").read_text())
    (component,) = header["components"]
    assert component["budget"] == summary["tokens_per_run"] and header["seed"] == 0
    # the plan reads an export of its own that keeps the column; the full recipe's export is left as it was
    assert {Path(file["path"]).parent.name for file in header["files"]} == {"export-dd-keep-semantic_cluster"}
    table = component["balance"]["table"]
    assert table["group"] == [0, 1, 2] and component["balance"]["clipped_groups"] == 0
    available = [float(tokens) for tokens in table["available_tokens"]]
    roots = [tokens ** 0.5 for tokens in available]
    for planned, root in zip(table["planned_tokens"], roots):  # within a few sequences of n ** 0.5 / Σ n ** 0.5
        assert abs(planned - summary["tokens_per_run"] * root / sum(roots)) <= 4 * (PROXY["seq_len"] + 1), table
    assert max(available) / min(available) > 4  # uneven groups: the balanced shares differ from the natural ones

    config["variants"]["balance"] = [balance | {"column": "nowhere"}]
    result = CliRunner().invoke(cli, ["ablate", str(write_yaml(tmp_path / "bad.yaml", config)),
                                      "--output", str(output)])
    assert result.exit_code == 2, result.output
    # the recipe (already complete) prints its run summary; the error is the one line after it
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [result.stderr.strip().splitlines()[-1]], result.stderr
    assert errors[0].startswith("error: variants.balance[0].column: 'nowhere' is not a column of the output of "
                                "clusters"), result.stderr
