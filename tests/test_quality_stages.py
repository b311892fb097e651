"""Scoring, filtering and domain stages: annotations, exact global cutoffs, deterministic sampling, full accounting."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gristmill.classifiers.training import train_classifier
from gristmill.classifiers.domain import load_rules, seed_labels
from gristmill.stages.quality.fasttext_model import FastTextClassifier, TrainingParameters
from gristmill.stages.quality.preprocess import tokenize
from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA
from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.pipeline.demo.sample import write_sample
from gristmill.pipeline.engine.stage import ReduceContext
from gristmill.stages.quality.domain_label import DomainLabel, DomainLabelConfig
from gristmill.stages.quality.quality_filter import QualityFilter, QualityFilterConfig
from gristmill.stages.quality.score_ranks import score_of_key, sortable_keys
from gristmill.stages.quality import quality_score as quality_score_module
from gristmill.stages.quality.quality_score import EMBEDDING_MODULE, MANIFEST_FILE, QualityScore, QualityScoreConfig

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = TrainingParameters(epoch=25, lr=0.5, dim=16, bucket=20_000, threads=1)


def read_pages(path: Path, kinds: set[str] | None = None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [row for row in rows if kinds is None or row["kind"] in kinds]


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("sample")
    write_sample(directory, pages=400)
    return directory / "pages.jsonl"


@pytest.fixture(scope="module")
def quality_model(sample: Path, tmp_path_factory) -> Path:
    """The quickstart's quality classifier: sample prose against sample spam and thin pages."""
    rows = read_pages(sample, {"prose", "spam", "low_quality"})
    labels = np.array(["positive" if row["kind"] == "prose" else "negative" for row in rows], object)
    output = tmp_path_factory.mktemp("models") / "quality"
    train_classifier(pa.array([row["text"] for row in rows]), labels, TINY_MODEL, output, [], 0.0, binary=True)
    return output


@pytest.fixture(scope="module")
def domain_model(sample: Path, tmp_path_factory) -> Path:
    rows = read_pages(sample)
    texts = pa.array([row["text"] for row in rows])
    labels = seed_labels(texts, pa.array([row["url"] for row in rows]), load_rules(REPO / "classifiers" / "domain_rules.yaml"))
    output = tmp_path_factory.mktemp("models") / "domain"
    train_classifier(texts, np.array(labels.to_pylist(), object), TINY_MODEL, output, [], 0.0, binary=False)
    return output


def documents(texts: list[str | None], scores: list[float | None] | None = None) -> pa.RecordBatch:
    rows = [{"id": f"doc-{index}", "text": text} for index, text in enumerate(texts)]
    batch = pa.RecordBatch.from_pylist(rows, schema=DOCUMENT_SCHEMA)
    if scores is not None:
        batch = batch.append_column("quality", pa.array(scores, pa.float32()))
    return batch


# --- quality_score -----------------------------------------------------------------------------------


def test_quality_score_adds_one_float32_column_per_classifier(quality_model: Path, sample: Path) -> None:
    config = QualityScoreConfig.model_validate({"models": [
        {"column": "quality", "model": str(quality_model)},
        {"column": "spamminess", "model": str(quality_model / "model.bin"), "label": "negative"},
    ]})
    stage = QualityScore(config)
    stage.setup()
    pages = read_pages(sample, {"prose", "spam"})
    batch = documents([row["text"] for row in pages] + ["", None, "   "])
    result = stage.process(batch)
    assert result.rejected.num_rows == 0 and result.kept.num_rows == batch.num_rows
    assert stage.output_schema(batch.schema).equals(result.kept.schema)
    quality = result.kept.column("quality").to_numpy(zero_copy_only=False)
    spamminess = result.kept.column("spamminess").to_numpy(zero_copy_only=False)
    assert result.kept.column("quality").type == pa.float32()
    assert result.kept.column("quality").null_count == 3  # empty, null and blank texts get no score
    np.testing.assert_allclose(quality[:-3] + spamminess[:-3], 1.0, atol=1e-6)
    classifier = FastTextClassifier.load(quality_model)
    expected = classifier.predict(tokenize(batch.column("text")))[:-3, classifier.labels.index("positive")]
    np.testing.assert_allclose(quality[:-3], expected, rtol=1e-6)
    kinds = np.array([row["kind"] for row in pages])
    assert quality[:-3][kinds == "prose"].min() > quality[:-3][kinds == "spam"].max()


def test_quality_score_accepts_column_equals_model_from_the_command_line(quality_model: Path) -> None:
    config = QualityScoreConfig.model_validate({"models": [f"quality={quality_model}"]})
    assert config.models[0].column == "quality" and config.models[0].model == str(quality_model)


@pytest.mark.parametrize("models,message", [
    (["quality"], "expected COLUMN=MODEL"),
    ([{"column": "q", "model": "/nonexistent/model"}], "neither a fastText model file nor a classifier directory"),
    ([], "at least 1 item"),
])
def test_quality_score_config_errors_name_the_problem(models: list, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        QualityScoreConfig.model_validate({"models": models})


def test_quality_score_needs_a_label_for_a_bare_model_file_and_refuses_to_overwrite(quality_model: Path) -> None:
    with pytest.raises(ValidationError, match="no model card naming a positive label"):
        QualityScoreConfig.model_validate({"models": [f"q={quality_model / 'model.bin'}"]})
    stage = QualityScore(QualityScoreConfig.model_validate({"models": [f"text_quality={quality_model}"]}))
    with pytest.raises(ValueError, match="'text_quality' already exists"):
        stage.output_schema(DOCUMENT_SCHEMA.append(pa.field("text_quality", pa.float32())))
    with pytest.raises(ValidationError, match="score columns must differ"):
        QualityScoreConfig.model_validate({"models": [f"q={quality_model}", f"q={quality_model}"]})


# --- quality_filter ----------------------------------------------------------------------------------


def test_threshold_mode_rejects_low_and_missing_scores_with_details() -> None:
    stage = QualityFilter(QualityFilterConfig(column="quality", keep={"mode": "threshold", "threshold": 0.5}))
    result = stage.process(documents(["a", "b", "c", "d", "e"], [0.9, 0.5, 0.49, None, float("nan")]))
    assert result.kept.column("id").to_pylist() == ["doc-0", "doc-1"]
    assert result.rejected.column("reason").to_pylist() == ["below_threshold", "missing_score", "missing_score"]
    assert result.rejected.column("detail").to_pylist()[0] == "quality=0.49 < 0.5"


@pytest.mark.parametrize("keep,message", [
    ({"mode": "threshold"}, r"keep\.threshold\.threshold\n  Field required"),
    ({"mode": "top_fraction", "fraction": 0.5, "threshold": 0.5}, r"keep\.top_fraction\.threshold\n  Extra inputs are not permitted"),
    ({"mode": "threshold", "threshold": 0.5, "alpha": 3}, r"keep\.threshold\.alpha\n  Extra inputs are not permitted"),
    ({"mode": "top_fraction", "fraction": 1.5}, "less than or equal to 1"),
    ({"mode": "ranked", "fraction": 0.5}, "does not match any of the expected tags: 'threshold', 'top_fraction', 'pareto'"),
])
def test_filter_config_takes_only_the_parameters_of_its_mode(keep: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as error:
        QualityFilterConfig(column="quality", keep=keep)
    assert error.value.error_count() == 1


def test_the_flat_spelling_of_earlier_releases_is_refused_with_the_new_one() -> None:
    with pytest.raises(ValidationError, match=r"mode, fraction: now inside keep; write keep: \{mode: top_fraction, fraction: 0.8\}"):
        QualityFilterConfig.model_validate({"column": "quality", "mode": "top_fraction", "fraction": 0.8})
    assert QualityFilterConfig.model_validate({"column": "q", "keep": "pareto"}).keep.alpha == 9.0  # a mode alone


class InlineContext(ReduceContext):
    """A reduce context over summary files, running tasks in this process."""

    def __init__(self, files: list[Path]):
        super().__init__([path.stem for path in files], files, files[0].parent, lambda fn, items: [fn(item) for item in items])


def write_summaries(stage: QualityFilter, directory: Path, shards: list[list[float | None]]) -> list[Path]:
    import pyarrow.parquet as pq

    paths = []
    for index, scores in enumerate(shards):
        path = directory / f"part-{index:05d}.parquet"
        pq.write_table(stage.summarize(documents(["x"] * len(scores), scores)), path)
        paths.append(path)
    return paths


@settings(max_examples=40, deadline=None)
@given(
    shards=st.lists(st.lists(st.one_of(st.none(), st.floats(-2, 2, width=32), st.sampled_from([0.25, 0.5, 0.75])),
                             max_size=40), min_size=1, max_size=4),
    fraction=st.floats(0.01, 1.0),
)
def test_global_cutoff_is_the_exact_score_of_the_kth_best_document(tmp_path_factory, shards, fraction) -> None:
    stage = QualityFilter(QualityFilterConfig(column="quality", keep={"mode": "top_fraction", "fraction": fraction}))
    cutoff = stage.reduce(InlineContext(write_summaries(stage, tmp_path_factory.mktemp("s"), shards)))
    scores = sorted((np.float32(s) for shard in shards for s in shard if s is not None), reverse=True)
    if not scores:
        assert cutoff is None
        return
    keep = max(1, round(fraction * len(scores)))
    assert cutoff == scores[keep - 1]
    stage.bind(cutoff, "part-00000")
    kept = sum(stage.process(documents(["x"] * len(shard), shard)).kept.num_rows for shard in shards)
    assert kept == sum(score >= cutoff for score in scores) >= keep


def test_sortable_keys_order_like_floats_and_invert() -> None:
    values = np.array([-np.inf, -3.5, -1e-30, 0.0, 1e-30, 0.25, 1.0, np.inf], np.float32)
    keys = sortable_keys(values)
    assert (np.diff(keys.astype(np.int64)) > 0).all()
    assert [score_of_key(int(key)) for key in keys] == values.tolist()


def test_pareto_sampling_matches_its_keep_probability_and_ignores_batching() -> None:
    stage = QualityFilter(QualityFilterConfig(column="quality", keep={"mode": "pareto", "alpha": 9.0, "seed": 7}))
    scores = [0.9] * 10_000 + [0.3] * 10_000 + [1.0] * 1_000
    batch = documents(["x"] * len(scores), scores)
    result = stage.process(batch)
    kept = set(result.kept.column("id").to_pylist())
    # P(pareto(a) > 1 - s) = (2 - s) ** -a: 0.424 for s = 0.9 and 0.0084 for s = 0.3; always kept at 1.
    assert abs(sum(f"doc-{i}" in kept for i in range(10_000)) / 10_000 - 1.1**-9) < 0.02
    assert abs(sum(f"doc-{i}" in kept for i in range(10_000, 20_000)) / 10_000 - 1.7**-9) < 0.004
    assert all(f"doc-{i}" in kept for i in range(20_000, 21_000))
    assert set(result.rejected.column("reason").to_pylist()) == {"pareto_not_sampled"}
    assert result.rejected.column("detail")[0].as_py().startswith("quality=0.9, pareto draw ")
    pieces = [stage.process(batch.slice(start, 777)) for start in range(0, batch.num_rows, 777)[::-1]]
    assert set().union(*(piece.kept.column("id").to_pylist() for piece in pieces)) == kept
    reseeded = QualityFilter(QualityFilterConfig(column="quality", keep={"mode": "pareto", "alpha": 9.0, "seed": 8})).process(batch)
    assert set(reseeded.kept.column("id").to_pylist()) != kept


# --- domain_label ------------------------------------------------------------------------------------


def test_domain_label_annotates_label_and_probability(domain_model: Path, sample: Path) -> None:
    stage = DomainLabel(DomainLabelConfig(model=str(domain_model)))
    stage.setup()
    pages = read_pages(sample, {"code", "math", "prose"})
    batch = documents([row["text"] for row in pages] + ["", None])
    result = stage.process(batch)
    assert result.kept.schema.equals(stage.output_schema(batch.schema))
    labels = result.kept.column("domain_label").to_pylist()
    scores = result.kept.column("domain_score").to_numpy(zero_copy_only=False)
    assert labels[-2:] == [None, None] and np.isnan(scores[-2:]).all()
    assert set(labels[:-2]) <= {"web", "code", "math", "reference", "forum"}
    assert ((scores[:-2] > 0.2) & (scores[:-2] <= 1.0)).all()
    kinds = np.array([row["kind"] for row in pages])
    assert np.mean(np.array(labels[:-2])[kinds == "math"] == "math") >= 0.8


# --- in a graph --------------------------------------------------------------------------------------


def split_sample(sample: Path, directory: Path, shards: int) -> Path:
    lines = sample.read_text().splitlines()
    directory.mkdir()
    for index in range(shards):
        (directory / f"part{index}.jsonl").write_text("\n".join(lines[index::shards]) + "\n")
    return directory


def test_only_the_top_fraction_mode_summarises_every_shard(tmp_path: Path, sample: Path, quality_model: Path) -> None:
    shards = split_sample(sample, tmp_path / "sample", 3)
    graph_path = tmp_path / "graph.yaml"
    graph_path.write_text(f"""
stages:
  read: {{stage: read_text, params: {{paths: ["{shards}/part*.jsonl"]}}}}
  scored: {{stage: quality_score, input: read, params: {{models: ["quality={quality_model}"]}}}}
  above: {{stage: quality_filter, input: scored, params: {{column: quality, keep: {{mode: threshold, threshold: 0.5}}}}}}
  sampled: {{stage: quality_filter, input: scored, params: {{column: quality, keep: {{mode: pareto}}}}}}
  best: {{stage: quality_filter, input: scored, params: {{column: quality, keep: {{mode: top_fraction, fraction: 0.5}}}}}}
""")
    run_graph(load_graph(graph_path, tmp_path / "run"), make_executor("inprocess", 1))
    summaries = {node: len(list((tmp_path / "run" / node / "_work" / "summaries").glob("*.parquet")))
                 for node in ("above", "sampled", "best")}
    assert summaries == {"above": 0, "sampled": 0, "best": 3}
    assert Dataset(tmp_path / "run" / "above").manifest().rejected["below_threshold"] > 0


def quickstart_graph(path: Path, shards: Path, quality_model: Path, domain_model: Path) -> Path:
    path.write_text(f"""
name: quality
plugins: [gristmill.stages.quality.quality_score, gristmill.stages.quality.quality_filter, gristmill.stages.quality.domain_label]
stages:
  read:
    stage: read_text
    params: {{paths: ["{shards}/part*.jsonl"]}}
  scored:
    stage: quality_score
    input: read
    params:
      models:
        - {{column: quality, model: "{quality_model}"}}
  domains:
    stage: domain_label
    input: scored
    params: {{model: "{domain_model}"}}
  best_quarter:
    stage: quality_filter
    input: domains
    params: {{column: quality, keep: {{mode: top_fraction, fraction: 0.25}}}}
  sampled:
    stage: quality_filter
    input: domains
    params: {{column: quality, keep: {{mode: pareto, alpha: 3}}}}
""")
    return path


@pytest.mark.slow
def test_quickstart_stages_give_identical_results_on_every_executor(
    tmp_path: Path, sample: Path, quality_model: Path, domain_model: Path
) -> None:
    shards = split_sample(sample, tmp_path / "sample", 4)
    graph_path = quickstart_graph(tmp_path / "graph.yaml", shards, quality_model, domain_model)
    outputs = {}
    for kind in ("inprocess", "local"):
        graph = load_graph(graph_path, tmp_path / kind)
        with make_executor(kind, 2) as executor:
            run_graph(graph, executor)
        outputs[kind] = {node: pl.read_parquet(tmp_path / kind / node / "*.parquet") for node in ("domains", "best_quarter", "sampled")}
    for node in ("domains", "best_quarter", "sampled"):
        assert outputs["inprocess"][node].equals(outputs["local"][node])

    scored = outputs["inprocess"]["domains"]
    best = outputs["inprocess"]["best_quarter"]
    cutoff = scored["quality"].drop_nulls().sort(descending=True)[round(0.25 * scored["quality"].drop_nulls().len()) - 1]
    assert best.height == (scored["quality"] >= cutoff).sum() and best["quality"].min() == cutoff
    for node in ("best_quarter", "sampled"):
        manifest = Dataset(tmp_path / "inprocess" / node).manifest()
        assert manifest.rows_in == scored.height == manifest.rows + sum(manifest.rejected.values())
        assert set(manifest.rejected) <= {"below_top_fraction", "pareto_not_sampled", "missing_score"}
    truth = {row["id"]: row["kind"] for row in read_pages(sample)}
    kept_kinds = [truth[doc_id] for doc_id in best["id"]]
    assert kept_kinds.count("spam") == 0 and kept_kinds.count("low_quality") == 0


# --- quality_score: embedding classifiers and ensembles ----------------------------------------------------------------


class LengthClassifier:
    """A stand-in embedding head: longer texts score higher; it counts the texts it scores."""

    scored: list[int] = []

    def __init__(self, path: str):
        self.path = path

    def score(self, texts: list[str]) -> np.ndarray:
        LengthClassifier.scored.append(len(texts))
        return np.array([min(len(text), 5000) / 5000 for text in texts], np.float32)


@pytest.fixture
def embedding_stub(monkeypatch, tmp_path: Path) -> Path:
    """A stub `embedding_model` module and a classifier directory whose manifest names the embedding kind."""
    module = types.ModuleType(EMBEDDING_MODULE)
    module.load_embedding_classifier = LengthClassifier
    monkeypatch.setitem(sys.modules, EMBEDDING_MODULE, module)
    LengthClassifier.scored = []
    directory = tmp_path / "length-head"
    directory.mkdir()
    (directory / MANIFEST_FILE).write_text(json.dumps({"kind": "embedding", "encoder": "stub"}))
    return directory


def test_a_manifest_naming_the_embedding_kind_loads_that_module_lazily(embedding_stub: Path, quality_model: Path,
                                                                       tmp_path: Path) -> None:
    config = QualityScoreConfig.model_validate({"models": [f"length={embedding_stub}", f"quality={quality_model}"]})
    stage = QualityScore(config)
    stage.setup()
    assert [kind for _, kind, _, _ in stage.scorers] == ["embedding", "fasttext"]
    texts = ["short", "a longer text of several words", "", None, "   "]
    result = stage.process(documents(texts))
    assert result.kept.column("length").to_pylist()[:2] == pytest.approx([5 / 5000, 30 / 5000])
    assert result.kept.column("length").null_count == 3 and result.kept.column("quality").null_count == 3
    assert LengthClassifier.scored == [2]  # texts without a word are never sent to the model
    fasttext_directory = tmp_path / "fasttext-with-manifest"
    shutil.copytree(quality_model, fasttext_directory)
    (fasttext_directory / MANIFEST_FILE).write_text(json.dumps({"kind": "fasttext"}))
    assert QualityScoreConfig.model_validate({"models": [f"q={fasttext_directory}"]}).models[0].kind == "fasttext"


def test_embedding_manifest_errors_name_the_problem(embedding_stub: Path, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ValidationError, match="an embedding classifier gives one score; leave `label` out"):
        QualityScoreConfig.model_validate({"models": [{"column": "q", "model": str(embedding_stub), "label": "hq"}]})
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / MANIFEST_FILE).write_text(json.dumps({"kind": "svm"}))
    with pytest.raises(ValidationError, match="kind 'svm' is not one of fasttext, embedding"):
        QualityScoreConfig.model_validate({"models": [f"q={odd}"]})
    monkeypatch.setattr(quality_score_module, "embedding_module_available", lambda: False)
    with pytest.raises(ValidationError, match="is an embedding classifier, and .*embedding_model is not installed"):
        QualityScoreConfig.model_validate({"models": [f"q={embedding_stub}"]})


def test_ensemble_config_forms_and_errors(quality_model: Path) -> None:
    models = [f"quality={quality_model}"]
    assert QualityScoreConfig.model_validate({"models": models, "ensemble": "mean"}).ensemble.method == "mean"
    spelled = QualityScoreConfig.model_validate({"models": models, "ensemble": '{"calibrate": "none"}'})
    assert (spelled.ensemble.column, spelled.ensemble.method, spelled.ensemble.calibrate) == ("quality_ensemble", "max", "none")
    assert not QualityScore.needs_global_view_for(spelled)
    assert QualityScore.needs_global_view_for(QualityScoreConfig.model_validate({"models": models, "ensemble": {}}))
    assert not QualityScore.needs_global_view_for(QualityScoreConfig.model_validate({"models": models}))
    with pytest.raises(ValidationError, match="score columns must differ"):
        QualityScoreConfig.model_validate({"models": models, "ensemble": {"column": "quality"}})
    with pytest.raises(ValidationError, match="'max' or 'mean'"):
        QualityScoreConfig.model_validate({"models": models, "ensemble": {"method": "median"}})


def rank_calibrated(scores: np.ndarray) -> np.ndarray:
    """floor(1000 × share of scored documents strictly below) / 1000, NaN stays NaN: by brute force."""
    scored = np.sort(scores[~np.isnan(scores)])
    shares = np.searchsorted(scored, scores, side="left") * 1000 // len(scored) / 1000
    return np.where(np.isnan(scores), np.nan, shares)


def test_the_rank_calibrated_ensemble_is_exact_the_same_on_any_sharding_and_scores_once(
    tmp_path: Path, sample: Path, quality_model: Path, embedding_stub: Path
) -> None:
    tables, documents_scored = {}, {}
    for shards in (1, 3):
        directory = split_sample(sample, tmp_path / f"sample{shards}", shards)
        graph_path = tmp_path / f"graph{shards}.yaml"
        graph_path.write_text(f"""
stages:
  read: {{stage: read_text, params: {{paths: ["{directory}/part*.jsonl"]}}}}
  scored:
    stage: quality_score
    input: read
    params:
      models: ["quality={quality_model}", "length={embedding_stub}"]
      ensemble: {{column: best, method: max, calibrate: rank}}
  averaged:
    stage: quality_score
    input: read
    params: {{models: ["quality={quality_model}", "length={embedding_stub}"], ensemble: {{method: mean, calibrate: none}}}}
""")
        LengthClassifier.scored = []
        run_graph(load_graph(graph_path, tmp_path / f"run{shards}"), make_executor("inprocess", 1))
        documents_scored[shards] = sum(LengthClassifier.scored)
        tables[shards] = {node: pl.read_parquet(tmp_path / f"run{shards}" / node / "*.parquet").sort("id")
                          for node in ("scored", "averaged")}
    assert tables[1]["scored"].equals(tables[3]["scored"]) and tables[1]["averaged"].equals(tables[3]["averaged"])
    scored = tables[1]["scored"]
    worded = int(scored["length"].is_not_null().sum())
    assert documents_scored[1] == documents_scored[3] == 2 * worded  # once per node: the summary is reused
    quality, length = (scored[column].to_numpy().astype(np.float64) for column in ("quality", "length"))
    expected = np.maximum(rank_calibrated(quality), rank_calibrated(length)).astype(np.float32)
    np.testing.assert_array_equal(scored["best"].to_numpy(), expected)
    assert scored["best"].n_unique() > 100 and 0.99 < scored["best"].max() < 1
    averaged = tables[1]["averaged"]
    np.testing.assert_array_equal(averaged["quality_ensemble"].to_numpy(),
                                  ((quality + length) / 2).astype(np.float32))


def test_the_run_report_shows_each_classifier_held_out_metrics(tmp_path: Path) -> None:
    """quality_score's report section reads the metrics `classifier train` wrote beside each model."""
    import json

    import pyarrow as pa

    from gristmill.pipeline.engine.dataset import Dataset
    from gristmill.pipeline.engine.stage_report import ReportedDataset
    from gristmill.stages.quality.quality_score import QualityScore

    graded, untrained = tmp_path / "grade_model", tmp_path / "bare_model"
    (graded / "evaluation").mkdir(parents=True)
    untrained.mkdir()
    (graded / "evaluation" / "metrics.json").write_text(json.dumps({
        "documents": 40, "threshold": 2, "accuracy": 0.85, "f1": 0.8, "spearman": 0.72, "precision": None,
        "confusion_matrix": {"labels": ["grade < 2", "grade >= 2"], "matrix": [[20, 3], [3, 14]]}}))
    dataset = ReportedDataset("scored", Dataset(tmp_path / "scored"), "quality_score", True, [], pa.schema([]),
                              config={"models": [{"column": "edu", "model": str(graded)},
                                                 {"column": "old", "model": str(untrained)}]})
    section, = QualityScore.report_sections(dataset)
    tables = [block.rows for block in section.blocks if hasattr(block, "rows")]
    assert {"measure": "spearman", "value": 0.72} in tables[0]
    assert all(row["measure"] != "precision" for row in tables[0])  # a metric that could not be computed is left out
    assert tables[1] == [{"true \\ predicted": "grade < 2", "grade < 2": 20, "grade >= 2": 3},
                         {"true \\ predicted": "grade >= 2", "grade < 2": 3, "grade >= 2": 14}]
    assert any("old: no held-out metrics" in block for block in section.blocks if isinstance(block, str))
    assert section.statistics["models"][0]["metrics"]["f1"] == 0.8
