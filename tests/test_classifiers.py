"""fastText classifiers: shared preprocessing, exact numpy inference, training retries, evaluation, domains, seeds, CLI."""

from __future__ import annotations

import bz2
import json
import random
import re
from pathlib import Path

import fasttext
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from pydoc_data.topics import topics as PYDOC_TOPICS

from gristmill.stages.quality import fasttext_model
from gristmill.classifiers.documents import parse_where, read_documents
from gristmill.classifiers.training import train_classifier
from gristmill.pipeline.cli.classifier import classifier_group
from gristmill.classifiers.domain import DomainRules, load_rules, seed_labels
from gristmill.classifiers.evaluate import binary_metrics, multiclass_metrics, roc_auc, score_distribution, write_evaluation
from gristmill.stages.quality.fasttext_model import FastTextClassifier, TrainingParameters, fnv1a_hashes, train_fasttext
from gristmill.classifiers.holdout import holdout_groups, holdout_mask
from gristmill.stages.quality.preprocess import fasttext_lines, tokenize
from gristmill.classifiers.seed_selection import SeedCandidate, select_seed_set
from gristmill.pipeline.demo.sample import write_sample

REPO = Path(__file__).resolve().parents[1]
# Strong settings for small corpora: fastText's defaults (5 epochs, lr 0.1) suit millions of documents.
SMALL_DATA = dict(epoch=50, lr=0.5, dim=32, bucket=100_000, threads=1)
PRODUCTS = ("replica watches", "cheap viagra", "payday loans", "casino bonus", "weight loss pills", "cheap flights",
            "crypto signals", "seo backlinks", "essay writing service", "phone unlock codes")
PLACES = ("online", "near me", "2024", "usa", "uk", "free delivery", "no prescription")
BOILERPLATE = (
    "Home | About | Contact | Blog | Shop", "We use cookies to improve your experience. Accept all cookies",
    "Copyright © 2024 All rights reserved.", "Share on Facebook Share on Twitter Pin it", "Related posts",
    "Leave a comment Cancel reply", "Sign in to your account Forgot password?", "Subscribe to our newsletter",
    "Privacy Policy | Terms of Service | Sitemap", "« Previous post Next post »", "Posted in Uncategorized | Tagged news",
    "Skip to content", "Search for:", "Load more", "Your cart is empty", "Back to top ↑", "Follow us on Instagram",
    "Accept Reject Manage preferences", "Menu", "Login Register", "Powered by WordPress", "Tags: news, updates, blog",
)


def pydoc_paragraphs() -> list[str]:
    """Real English prose: the stdlib's pydoc topics, without code, grammar rules or very short lines."""
    paragraphs = []
    for key in sorted(PYDOC_TOPICS):
        for chunk in re.split(r"\n\s*\n", PYDOC_TOPICS[key]):
            text = " ".join(chunk.split())
            if not chunk.startswith(" ") and len(text) >= 80 and ">>>" not in text and "::=" not in text:
                paragraphs.append(text)
    return list(dict.fromkeys(paragraphs))


def spam_page(rng: random.Random) -> str:
    product, place = rng.choice(PRODUCTS), rng.choice(PLACES)
    lines = (f"Best {product} {place}", f"buy {product} cheap {product} discount {product} {place}",
             f"CLICK HERE for {product.upper()}!!!", f"{product} {product} {product} lowest price guaranteed",
             f"Top 10 {product} deals - free shipping - order now", f"{product} reviews, {product} coupon, {product} sale",
             f"Get {rng.randint(10, 90)}% off {product} today only", f"Call now {rng.randint(100, 999)}-{rng.randint(1000, 9999)}")
    return "\n".join(rng.choice(lines) for _ in range(rng.randint(6, 20)))


def boilerplate_page(rng: random.Random) -> str:
    return "\n".join(rng.sample(BOILERPLATE, rng.randint(5, 14)))


def shuffled_page(rng: random.Random, text: str) -> str:
    """Real words in random order: right vocabulary, no language; only word n-grams can tell."""
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


def quality_corpus(paragraphs: list[str], seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Documents of 1-3 real paragraphs against as many spam, boilerplate and shuffled pages; texts, labels, kinds."""
    rng = random.Random(seed)
    prose, start = [], 0
    while start < len(paragraphs):
        size = rng.randint(1, 3)
        prose.append("\n\n".join(paragraphs[start:start + size]))
        start += size
    kinds = ["prose"] * len(prose) + [("spam", "boilerplate", "shuffled")[index % 3] for index in range(len(prose))]
    negatives = [spam_page(rng) if kind == "spam" else boilerplate_page(rng) if kind == "boilerplate"
                 else shuffled_page(rng, rng.choice(prose)) for kind in kinds[len(prose):]]
    labels = np.array(["positive"] * len(prose) + ["negative"] * len(negatives), object)
    return prose + negatives, labels, np.array(kinds)


def held_out_auc_by_kind(card_dir: Path, texts: list[str], kinds: np.ndarray) -> dict[str, float]:
    """ROC-AUC of prose against each negative kind, on the documents the trainer held out."""
    held = holdout_mask(holdout_groups(pa.array(texts), pa.table({})).keys, 0.2)
    classifier = FastTextClassifier.load(card_dir)
    scores = classifier.predict(tokenize([text for text, keep in zip(texts, held) if keep]))
    scores = scores[:, classifier.labels.index("positive")]
    kinds = kinds[held]
    return {kind: roc_auc(kinds[(kinds == "prose") | (kinds == kind)] == "prose",
                          scores[(kinds == "prose") | (kinds == kind)]) for kind in ("spam", "boilerplate", "shuffled")}


# --- preprocessing -------------------------------------------------------------------------------


def test_tokenize_lowercases_maps_digits_and_splits_punctuation_runs() -> None:
    tokens = tokenize(["Hello, World!! It's 2024.", None, "", " \t\n ", "naïve\u00a0café\x00ok", "ÉTÉ—Straße"])
    assert tokens.to_pylist() == [
        ["hello", ",", "world", "!!", "it", "'", "s", "0000", "."], [], [], [], ["naïve", "café", "ok"],
        ["été", "—", "straße"],
    ]


def test_fasttext_lines_prefix_labels_and_join_tokens() -> None:
    tokens = tokenize(["Good text.", "BUY NOW!!!"])
    assert fasttext_lines(tokens, ["positive", "negative"]) == ["__label__positive good text .", "__label__negative buy now !!!"]
    assert fasttext_lines(tokens) == ["good text .", "buy now !!!"]


def fnv1a_reference(text: str) -> int:
    """fastText's Dictionary::hash, byte by byte, with its sign extension of bytes >= 0x80."""
    value = 2166136261
    for byte in text.encode():
        value = ((value ^ ((byte - 256 if byte >= 128 else byte) & 0xFFFFFFFF)) * 16777619) & 0xFFFFFFFF
    return value


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=30))
def test_vectorised_fnv1a_equals_fasttexts_hash(words: list[str]) -> None:
    assert fnv1a_hashes(pa.array(words, pa.string())).tolist() == [fnv1a_reference(word) for word in words]


def test_fnv1a_of_known_words() -> None:
    assert fnv1a_hashes(pa.array(["", "a", "é"])).tolist() == [2166136261, 0xE40C292C, fnv1a_reference("é")]


# --- fastText training and exact numpy inference ---------------------------------------------------


@pytest.fixture(scope="module")
def paragraphs() -> list[str]:
    return pydoc_paragraphs()


@pytest.fixture(scope="module")
def small_model(paragraphs: list[str]):
    texts, labels, _ = quality_corpus(paragraphs[:300])
    return train_fasttext(tokenize(texts), labels.tolist(), TrainingParameters(epoch=3, dim=16, bucket=20_000, threads=1)).model


def awkward_texts(paragraphs: list[str]) -> list[str | None]:
    rng = random.Random(3)
    return [rng.choice(paragraphs)[: rng.randint(0, 400)] + " zqxj ünïcödé 日本語 \u00a0 !!" for _ in range(200)] + [
        "", None, "!!!", "word", "x" * 3000, shuffled_page(rng, paragraphs[0])]


def fasttext_probabilities(model, texts: list[str | None], labels: tuple[str, ...]) -> np.ndarray:
    """fastText's own predict, line by line through the raw binding (correct under numpy 2)."""
    probabilities = np.full((len(texts), len(labels)), np.nan)
    for row, line in enumerate(fasttext_lines(tokenize(texts))):
        for probability, label in model.f.predict(line + "\n", -1, 0.0, "strict"):
            probabilities[row, labels.index(label.removeprefix("__label__"))] = probability
    return probabilities


@pytest.mark.parametrize("word_ngrams,bucket", [(1, 0), (2, 20_000), (3, 1_000)])
def test_numpy_inference_reproduces_fasttext_predict(paragraphs: list[str], word_ngrams: int, bucket: int) -> None:
    texts, labels, _ = quality_corpus(paragraphs[:200])
    model = train_fasttext(tokenize(texts), labels.tolist(), TrainingParameters(
        epoch=3, dim=8, word_ngrams=word_ngrams, bucket=bucket, threads=1)).model
    queries = awkward_texts(paragraphs)
    classifier = FastTextClassifier(model)
    ours = classifier.predict(tokenize(queries))
    # fastText reports exp(log(p + 1e-5)), so its probabilities sit 1e-5 above the softmax.
    np.testing.assert_allclose(ours, fasttext_probabilities(model, queries, classifier.labels) - 1e-5, atol=2e-6)
    assert np.allclose(ours.sum(axis=1), 1.0)


def test_numpy_inference_handles_one_vs_all_models(tmp_path: Path, paragraphs: list[str]) -> None:
    texts, labels, kinds = quality_corpus(paragraphs[:200])
    (tmp_path / "train.txt").write_text("\n".join(fasttext_lines(tokenize(texts), kinds.tolist())) + "\n")
    model = fasttext.train_supervised(str(tmp_path / "train.txt"), loss="ova", epoch=3, dim=8, bucket=5_000,
                                      wordNgrams=2, thread=1, verbose=0)
    queries = awkward_texts(paragraphs)
    classifier = FastTextClassifier(model)
    expected = fasttext_probabilities(model, queries, classifier.labels) - 1e-5
    np.testing.assert_allclose(classifier.predict(tokenize(queries)), expected, atol=2e-6)


def test_quantized_models_fall_back_to_fasttexts_predict(paragraphs: list[str]) -> None:
    texts, labels, _ = quality_corpus(paragraphs[:100])
    model = train_fasttext(tokenize(texts), labels.tolist(), TrainingParameters(epoch=3, dim=4, bucket=500, threads=1)).model
    queries = awkward_texts(paragraphs)[:50]
    before = FastTextClassifier(model).predict(tokenize(queries))
    model.quantize(qnorm=False, retrain=False, cutoff=0)
    quantized = FastTextClassifier(model)
    after = quantized.predict(tokenize(queries))
    assert quantized._model is model
    expected = fasttext_probabilities(model, queries, quantized.labels)
    np.testing.assert_allclose(after, expected, atol=1e-6)
    assert np.corrcoef(before[:, 0], after[:, 0])[0, 1] > 0.9


def test_training_retries_with_the_next_seed_on_fasttexts_nan_error(monkeypatch, paragraphs: list[str]) -> None:
    real_train, seeds = fasttext.train_supervised, []

    def unlucky(path, seed, **options):
        seeds.append(seed)
        if len(seeds) < 3:
            raise RuntimeError("Encountered NaN.")
        return real_train(path, seed=seed, **options)

    monkeypatch.setattr(fasttext, "train_supervised", unlucky)
    texts, labels, _ = quality_corpus(paragraphs[:60])
    run = train_fasttext(tokenize(texts), labels.tolist(), TrainingParameters(epoch=1, dim=4, bucket=100, seed=5))
    assert seeds == [5, 6, 7]
    assert (run.seed, run.failed_seeds, run.arguments["seed"]) == (7, [5, 6], 7)

    def hopeless(path, seed, **options):
        raise RuntimeError("Encountered NaN.")

    monkeypatch.setattr(fasttext, "train_supervised", hopeless)
    with pytest.raises(RuntimeError, match=r"every seed tried: \[1, 2\]"):
        train_fasttext(tokenize(texts), labels.tolist(), TrainingParameters(epoch=1, attempts=2))


def test_training_does_not_retry_other_errors(monkeypatch) -> None:
    def broken(path, seed, **options):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(fasttext, "train_supervised", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        train_fasttext(tokenize(["a b", "c d"]), ["x", "y"], TrainingParameters())


def test_quality_classifier_separates_real_prose_from_spam_boilerplate_and_shuffled_text(
    tmp_path: Path, paragraphs: list[str]
) -> None:
    texts, labels, kinds = quality_corpus(paragraphs)
    card = train_classifier(pa.array(texts), labels, TrainingParameters(**SMALL_DATA), tmp_path / "model", [],
                            holdout_fraction=0.2, binary=True)
    metrics = card["metrics"]
    assert metrics["positives"] > 40 and metrics["negatives"] > 40
    assert metrics["roc_auc"] >= 0.95
    assert metrics["f1"] >= 0.85
    by_kind = held_out_auc_by_kind(tmp_path / "model", texts, kinds)
    assert by_kind["spam"] >= 0.99 and by_kind["boilerplate"] >= 0.99
    assert by_kind["shuffled"] >= 0.9


def test_quality_classifier_separates_real_wikipedia_and_news_prose(tmp_path: Path) -> None:
    gensim = pytest.importorskip("gensim")
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    data = Path(gensim.__file__).parent / "test" / "test_data"
    wiki = data / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    paragraphs = []
    for _, markup, _ in extract_pages(bz2.BZ2File(wiki)):
        for chunk in filter_wiki(markup).replace("'''", "").replace("''", "").split("\n"):
            text = " ".join(chunk.split())
            if len(text) >= 200 and not text.startswith(("=", "|", "{", "[")):
                paragraphs.append(text)
        if len(paragraphs) >= 150:
            break
    paragraphs += (data / "lee_background.cor").read_text().splitlines()
    texts, labels, kinds = quality_corpus(paragraphs, seed=1)
    card = train_classifier(pa.array(texts), labels, TrainingParameters(**SMALL_DATA), tmp_path / "model", [],
                            holdout_fraction=0.2, binary=True)
    assert card["metrics"]["roc_auc"] >= 0.95
    assert held_out_auc_by_kind(tmp_path / "model", texts, kinds)["shuffled"] >= 0.9


# --- evaluation --------------------------------------------------------------------------------------


def test_binary_metrics_by_hand() -> None:
    metrics = binary_metrics(np.array([1, 1, 0, 0, 1], bool), np.array([0.9, 0.4, 0.6, 0.1, np.nan]))
    assert metrics["confusion_matrix"]["matrix"] == [[1, 1], [2, 1]]  # the unscored positive is a false negative
    assert metrics["precision"] == 0.5 and metrics["recall"] == pytest.approx(1 / 3) and metrics["f1"] == pytest.approx(0.4)
    assert metrics["roc_auc"] == 0.75  # pairs: 0.9>0.6, 0.9>0.1, 0.4<0.6, 0.4>0.1 (unscored left out)
    assert metrics["unscored"] == 1
    low, high = metrics["calibration"][1], metrics["calibration"][9]  # [0.1, 0.2) and [0.9, 1.0]
    assert (low["count"], low["observed_rate"]) == (1, 0.0) and (high["count"], high["mean_predicted"]) == (1, 0.9)
    assert sum(row["count"] for row in metrics["calibration"]) == 4


def test_roc_auc_counts_ties_as_half_and_equals_the_pairwise_definition() -> None:
    assert roc_auc(np.array([1, 0], bool), np.array([0.5, 0.5])) == 0.5
    assert roc_auc(np.array([1, 1], bool), np.array([0.5, 0.7])) is None
    rng = np.random.default_rng(0)
    truth, scores = rng.random(300) < 0.4, rng.integers(0, 20, 300) / 20
    pairs = [(p > n) + 0.5 * (p == n) for p in scores[truth] for n in scores[~truth]]
    assert roc_auc(truth, scores) == pytest.approx(np.mean(pairs))


def test_multiclass_metrics_by_hand() -> None:
    probabilities = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    metrics = multiclass_metrics(["web", "code", "code", "forum"], probabilities, ["web", "code", "math"])
    assert metrics["confusion_matrix"] == {
        "labels": ["web", "code", "math", "forum"],
        "matrix": [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]],
    }
    assert metrics["accuracy"] == 0.5
    assert metrics["per_class"]["code"] == pytest.approx(
        {"support": 2, "precision": 1.0, "recall": 0.5, "f1": 2 / 3, "roc_auc": 1.0})
    assert metrics["per_class"]["web"]["precision"] == 0.5
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)  # math has no support


def test_evaluation_report_is_json_markdown_and_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    truth = rng.random(200) < 0.5
    metrics = binary_metrics(truth, np.clip(truth * 0.6 + rng.random(200) * 0.4, 0, 1))
    paths = write_evaluation(metrics, tmp_path / "eval", "Test report")
    assert json.loads(paths["json"].read_text())["roc_auc"] == metrics["roc_auc"] > 0.9
    markdown = paths["markdown"].read_text()
    assert markdown.startswith("# Test report") and "ROC-AUC" in markdown and "| negative |" in markdown
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    multi = multiclass_metrics(["a", "b"], np.array([[0.9, 0.1], [0.3, 0.7]]), ["a", "b"])
    assert write_evaluation(multi, tmp_path / "multi", "Multi")["plot"].stat().st_size > 1000


def test_score_distribution_summarises_scores_and_counts_missing() -> None:
    summary = score_distribution(pa.array([0.0, 0.25, 0.5, 0.75, 1.0, None], pa.float32()))
    assert (summary["count"], summary["missing"]) == (6, 1)
    assert summary["mean"] == 0.5 and summary["quantiles"]["p50"] == 0.5 and summary["min"] == 0.0
    assert sum(summary["histogram"]["counts"]) == 5 and summary["histogram"]["counts"][-1] == 1
    assert score_distribution([])["count"] == 0


# --- input selection ---------------------------------------------------------------------------------


@pytest.mark.parametrize("expression,expected", [
    ('source == "wiki"', ("source", "==", "wiki")),
    ("score >= 0.5", ("score", ">=", 0.5)),
    ("kind in ['spam', 'low_quality']", ("kind", "in", ["low_quality", "spam"])),
    ("year != 2020", ("year", "!=", 2020)),
])
def test_where_expressions_parse_to_one_comparison(expression: str, expected: tuple) -> None:
    condition = parse_where(expression)
    assert (condition.column, condition.operator, condition.value) == expected


@pytest.mark.parametrize("expression", [
    "__import__('os').system('touch pwned')", "source == other_column", "a < b < 3", "kind in 'abc'",
    "source == 'a' and lang == 'en'", "len(text) > 3", "source", "source = 'wiki'", "kind in []",
])
def test_where_expressions_reject_anything_but_column_op_literal(expression: str) -> None:
    with pytest.raises(ValueError, match="column op literal"):
        parse_where(expression)


def test_where_mask_treats_nulls_as_no_match_and_names_type_errors() -> None:
    table = pa.table({"source": ["wiki", None, "crawl"], "score": [0.9, 0.2, None]})
    assert parse_where("source != 'crawl'").mask(table).to_pylist() == [True, False, False]
    assert parse_where("score < 0.5").mask(table).to_pylist() == [False, True, False]
    with pytest.raises(ValueError, match="cannot compare a string column"):
        parse_where("source > 3").mask(table)
    with pytest.raises(ValueError, match="'missing' is not in the data"):
        parse_where("missing == 1").mask(table)


def test_documents_are_read_from_dataset_directories_parquet_and_jsonl_alike(tmp_path: Path) -> None:
    rows = [{"id": f"d{i}", "text": f"text number {i}", "source": "wiki" if i % 2 else "crawl"} for i in range(6)]
    (tmp_path / "dataset").mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:3]), tmp_path / "dataset" / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[3:]), tmp_path / "dataset" / "part-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "docs.parquet")
    lines = [json.dumps(row) for row in rows] + ["{broken", "[1, 2]", json.dumps({"text": 7, "source": "wiki"})]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    selected = {}
    for path in ("dataset", "docs.parquet", "docs.jsonl"):
        table, record = read_documents(str(tmp_path / path), "source == 'wiki'", ["text"], "positive")
        selected[path] = table.column("text").to_pylist()
        assert record["rows_selected"] == 3 and all(file["checksum"].startswith("xxh3_128:") for file in record["files"])
    assert selected["dataset"] == selected["docs.parquet"] == selected["docs.jsonl"] == [
        "text number 1", "text number 3", "text number 5"]
    assert record["malformed_lines"] == 2 and record["rows_read"] == 7  # the numeric text was read, then dropped
    with pytest.raises(ValueError, match="no input files"):
        read_documents(str(tmp_path / "absent.jsonl"), None, ["text"], "positive")


# --- domains -----------------------------------------------------------------------------------------


def test_seed_rules_prefer_keyword_evidence_then_url_matches_then_default() -> None:
    rules = DomainRules.model_validate({"default_label": "web", "labels": {
        "code": {"url_patterns": [r"github\.com/"], "keywords": ["def ", "return "], "min_keyword_hits": 2},
        "math": {"keywords": ["theorem", "proof"], "min_keyword_hits": 2},
    }})
    texts = ["A theorem and its proof.", "A README.", "def f(): return 1", "def f(): return 1 theorem proof proof",
             "Theorem. Proof. PROOF.", "One theorem.", None]
    urls = ["https://github.com/x/y", "https://GitHub.com/x", None, "https://a.org/", "https://b.org/", "https://c.org/", None]
    assert seed_labels(pa.array(texts), pa.array(urls), rules).to_pylist() == [
        "math", "code", "code", "math", "math", "web", "web"]


def test_shipped_rules_load_and_label_the_bundled_sample(tmp_path: Path) -> None:
    rules = load_rules(REPO / "classifiers" / "domain_rules.yaml")
    assert rules.label_names == ["code", "math", "reference", "forum", "web"]
    write_sample(tmp_path, pages=200)
    rows = [json.loads(line) for line in (tmp_path / "pages.jsonl").read_text().splitlines()]
    labels = seed_labels(pa.array([row["text"] for row in rows]), pa.array([row["url"] for row in rows]), rules)
    by_kind = {}
    for row, label in zip(rows, labels.to_pylist()):
        by_kind.setdefault(row["kind"], []).append(label)
    assert set(by_kind["math"]) == {"math"}
    assert set(by_kind["code"]) <= {"code", "web"} and by_kind["code"].count("code") >= len(by_kind["code"]) / 2
    assert by_kind["spam"].count("web") == len(by_kind["spam"])


def test_bad_rules_files_are_reported_with_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("labels:\n  code:\n    url_patterns: ['(unclosed']\n")
    with pytest.raises(ValueError, match=r"rules.yaml: labels.code.url_patterns: .*not a valid RE2"):
        load_rules(path)
    path.write_text("labels:\n  code:\n    keywords: [x]\n    weight: 3\n")
    with pytest.raises(ValueError, match=r"rules.yaml: labels.code.weight: unknown field"):
        load_rules(path)


# --- seed selection ----------------------------------------------------------------------------------


class FakeProxyRunner:
    """Held-out bits per byte per candidate, as a proxy run would report; some runs fail."""

    metric, higher_is_better = "heldout_bits_per_byte", False

    def __init__(self, results: dict[str, float | Exception]):
        self.results, self.calls = results, []

    def run(self, candidate: SeedCandidate) -> float:
        self.calls.append(candidate.name)
        result = self.results[candidate.name]
        if isinstance(result, Exception):
            raise result
        return result


def test_seed_selection_keeps_the_candidate_with_the_best_proxy_metric() -> None:
    candidates = [SeedCandidate("wiki", ("wiki/",)), SeedCandidate("books", ("books/",), "lang == 'en'"),
                  SeedCandidate("broken", ("x/",)), SeedCandidate("diverged", ("y/",)), SeedCandidate("books-again", ("b/",))]
    runner = FakeProxyRunner({"wiki": 1.12, "books": 1.05, "broken": OSError("disk full"), "diverged": float("nan"),
                              "books-again": 1.05})
    selection = select_seed_set(candidates, runner)
    assert runner.calls == [candidate.name for candidate in candidates]
    assert selection.best == candidates[1]
    assert [outcome.candidate.name for outcome in selection.outcomes] == ["books", "books-again", "wiki", "broken", "diverged"]
    assert "disk full" in selection.outcomes[3].error and "nan" in selection.outcomes[4].error
    assert json.loads(json.dumps(selection.to_json()))["best"] == "books"


def test_seed_selection_can_maximise_and_reports_no_winner_when_all_fail() -> None:
    runner = FakeProxyRunner({"a": 0.41, "b": 0.47})
    runner.higher_is_better = True
    assert select_seed_set([SeedCandidate("a", ()), SeedCandidate("b", ())], runner).best.name == "b"
    assert select_seed_set([SeedCandidate("a", ())], FakeProxyRunner({"a": ValueError("x")})).best is None
    with pytest.raises(ValueError, match="unique"):
        select_seed_set([SeedCandidate("a", ()), SeedCandidate("a", ())], runner)


def test_select_seeds_trains_a_proxy_per_candidate_and_picks_the_set_closest_to_the_heldout_prose(tmp_path: Path) -> None:
    """Real prose against the same words shuffled (one JSONL, told apart by --candidate-where): same tokens, so
    only what the proxy model learns from word order can separate them, and the prose must win on held-out prose."""
    from gristmill.stages.tokens.tokenization import DEFAULT_EOS, save_tokenizer, train_byte_level_bpe

    paragraphs = pydoc_paragraphs()
    train_part, heldout_part = paragraphs[:-60], paragraphs[-60:]
    rng = random.Random(5)
    rows = [{"text": text, "kind": "prose"} for text in train_part]
    rows += [{"text": shuffled_page(rng, text), "kind": "shuffled"} for text in train_part]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps({"text": text}) + "\n" for text in heldout_part))
    save_tokenizer(train_byte_level_bpe(train_part, vocab_size=512), tmp_path / "tokenizer", DEFAULT_EOS, {})
    pool = str(tmp_path / "pool.jsonl")
    result = CliRunner().invoke(classifier_group, [
        "select-seeds", "--candidate", f"shuffled={pool}", "--candidate-where", "shuffled=kind == 'shuffled'",
        "--candidate", f"prose={pool}", "--candidate-where", "prose=kind == 'prose'",
        "--tokenizer", str(tmp_path / "tokenizer"),
        "--heldout", f"docs={tmp_path / 'heldout.jsonl'}", "--tokens", str(60 * 1024), "--output", str(tmp_path / "out"),
        "--set", "tokens_per_step=1024", "--set", "seq_len=128", "--set", "warmup_steps=5",
        "--set", "learning_rate=0.003", "--set", "eval_tokens=4096", "--set", "log_every=1000"])
    assert result.exit_code == 0, result.output
    selection = json.loads((tmp_path / "out" / "selection.json").read_text())
    values = {outcome["candidate"]["name"]: outcome["value"] for outcome in selection["outcomes"]}
    assert selection["best"] == "prose" and "best seed set: prose" in result.output
    assert values["prose"] < values["shuffled"] - 0.02
    tokens = {name: json.loads((tmp_path / "out" / "tokens" / f"candidate-{name}" / "documents.json").read_text())
              for name in ("prose", "shuffled")}
    assert tokens["prose"]["sequences"] == tokens["shuffled"]["sequences"] == len(train_part)  # the where filter split the pool
    metrics = json.loads((tmp_path / "out" / "runs" / "prose" / "seed-0" / "metrics.json").read_text())
    assert len(metrics["history"]) == 60 and set(metrics["final_bits_per_byte"]) == {"docs"}


@pytest.mark.parametrize(("arguments", "message"), [
    (["--candidate", "a=x.jsonl"], "at least two candidates"),
    (["--candidate", "a=x.jsonl", "--candidate", "a=y.jsonl"], "'a' is given twice"),
    (["--candidate", "a", "--candidate", "b=y.jsonl"], "expected NAME=PATH"),
    (["--candidate", "a=x.jsonl", "--candidate", "b=y.jsonl", "--candidate-where", "c=kind == 'x'"], "names no candidate: c"),
])
def test_select_seeds_rejects_bad_candidates_in_one_line(tmp_path: Path, arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(classifier_group, ["select-seeds", *arguments, "--tokenizer", str(tmp_path),
                                                   "--heldout", "h=z.jsonl", "--tokens", "100", "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1


# --- command line ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_pages(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("sample")
    write_sample(directory, pages=400)
    return directory / "pages.jsonl"


def test_cli_trains_a_quality_classifier_with_a_model_card_and_evaluates_it(tmp_path: Path, sample_pages: Path) -> None:
    runner, output = CliRunner(), tmp_path / "quality_model"
    result = runner.invoke(classifier_group, [
        "train", "--positive", str(sample_pages), "--positive-where", 'kind == "prose"',
        "--negative", str(sample_pages), "--negative-where", "kind in ['spam', 'low_quality']",
        "--output", str(output), "--epoch", "25", "--lr", "0.5", "--dim", "16", "--bucket", "20000", "--threads", "1",
        "--holdout", "0.25"])
    assert result.exit_code == 0, result.output
    card = json.loads((output / "model_card.json").read_text())
    assert card["labels"] == ["positive", "negative"] or card["labels"] == ["negative", "positive"]
    assert card["positive_label"] == "positive" and card["preprocessing"] == "gristmill-fasttext-v1"
    positive_input = card["training_data"]["inputs"][0]
    assert positive_input["where"] == 'kind == "prose"' and positive_input["rows_selected"] > 100
    assert positive_input["files"][0]["bytes"] == sample_pages.stat().st_size
    assert card["parameters"]["epoch"] == card["fasttext_arguments"]["epoch"] == 25
    assert card["seed"] == 1 and card["failed_seeds"] == []
    assert card["metrics"]["roc_auc"] >= 0.95
    assert {path.name for path in (output / "evaluation").iterdir()} == {"metrics.json", "metrics.md", "metrics.png"}

    result = runner.invoke(classifier_group, [
        "eval", "--model", str(output), "--positive", str(sample_pages), "--positive-where", "kind == 'pii'",
        "--negative", str(sample_pages), "--negative-where", "kind == 'low_quality'", "--output", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["roc_auc"] >= 0.9 and metrics["positives"] > 0 and metrics["negatives"] > 0


def test_cli_trains_a_domain_classifier_from_seed_rules(tmp_path: Path, sample_pages: Path) -> None:
    result = CliRunner().invoke(classifier_group, [
        "train", "--data", str(sample_pages), "--rules", str(REPO / "classifiers" / "domain_rules.yaml"),
        "--output", str(tmp_path / "domains"), "--epoch", "25", "--lr", "0.5", "--dim", "16", "--bucket", "20000",
        "--threads", "1"])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "domains" / "model_card.json").read_text())
    assert card["kind"] == "multiclass" and sorted(card["labels"]) == ["code", "forum", "math", "reference", "web"]
    assert card["training_data"]["inputs"][0]["rules"]["checksum"].startswith("xxh3_128:")
    assert card["metrics"]["per_class"]["code"]["recall"] >= 0.5


@pytest.mark.parametrize("arguments,message", [
    (["--positive", "x.jsonl", "--data", "y.jsonl"], "either --positive and --negative"),
    (["--positive", "x.jsonl"], "needs both --positive and --negative"),
    (["--data", "y.jsonl"], "exactly one of --label-column and --rules"),
])
def test_cli_rejects_mixed_up_inputs(tmp_path: Path, arguments: list[str], message: str) -> None:
    result = CliRunner().invoke(classifier_group, ["train", *arguments, "--output", str(tmp_path / "m")])
    assert result.exit_code == 2 and message in result.output


def test_cli_reports_a_bad_filter_without_a_traceback(tmp_path: Path, sample_pages: Path) -> None:
    result = CliRunner().invoke(classifier_group, [
        "train", "--positive", str(sample_pages), "--positive-where", "kind = 'prose'", "--negative", str(sample_pages),
        "--output", str(tmp_path / "m")])
    assert result.exit_code == 2 and "error: cannot read filter" in result.output


def paired_pages(paragraphs: list[str], directory: Path) -> tuple[Path, Path]:
    """Pages and their shuffled copies, one JSONL file each; a page and its copy share url and id."""
    rng = random.Random(3)
    pages = [{"id": f"page-{index}", "url": f"https://example.org/{index}", "text": "\n\n".join(paragraphs[index:index + 2])}
             for index in range(0, 400, 2)]
    copies = [page | {"text": shuffled_page(rng, page["text"])} for page in pages]
    for name, rows in (("pages.jsonl", pages), ("shuffled.jsonl", copies)):
        (directory / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directory / "pages.jsonl", directory / "shuffled.jsonl"


def test_holdout_keeps_a_page_and_its_paired_negative_on_one_side(tmp_path: Path, paragraphs: list[str]) -> None:
    positives, negatives = paired_pages(paragraphs, tmp_path)
    result = CliRunner().invoke(classifier_group, [
        "train", "--positive", str(positives), "--negative", str(negatives), "--output", str(tmp_path / "m"),
        "--holdout", "0.3", "--epoch", "5", "--dim", "8", "--bucket", "10000", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "held-out (split by url)" in result.output
    card = json.loads((tmp_path / "m" / "model_card.json").read_text())
    assert card["training_data"]["holdout"] == {"group": "url", "documents_split_by_text_hash": 0}
    held_out = card["training_data"]["documents"]["held_out"]
    assert 30 < held_out["positive"] == held_out["negative"] < 100
    metrics = json.loads((tmp_path / "m" / "evaluation" / "metrics.json").read_text())
    assert metrics["holdout"]["group"] == "url"
    assert "Held out by url" in (tmp_path / "m" / "evaluation" / "metrics.md").read_text()

    texts = [json.loads(line)["text"] for path in (positives, negatives) for line in path.read_text().splitlines()]
    urls = [json.loads(line)["url"] for path in (positives, negatives) for line in path.read_text().splitlines()]
    by_url = holdout_mask(holdout_groups(pa.array(texts), pa.table({"url": urls})).keys, 0.3)
    sides = {}
    for url, held in zip(urls, by_url):
        assert sides.setdefault(url, held) == held
    by_text = holdout_mask(holdout_groups(pa.array(texts), pa.table({})).keys, 0.3)
    assert any(by_text[index] != by_text[index + 200] for index in range(200))


def test_holdout_group_column_falls_back_to_text_and_names_a_missing_column(tmp_path: Path) -> None:
    texts = pa.array(["one page", "its copy", "a page without a url"])
    groups = holdout_groups(texts, pa.table({"url": ["https://a.org/", "https://a.org/", None],
                                             "id": ["1", "2", "3"]}))
    assert groups.column == "url" and groups.text_fallbacks == 1
    assert groups.keys.to_pylist() == ["https://a.org/", "https://a.org/", "a page without a url"]
    assert holdout_groups(texts, pa.table({"url": pa.nulls(3, pa.string()), "id": ["1", "1", "2"]})).column == "id"
    assert holdout_groups(texts, pa.table({"url": pa.nulls(3, pa.string())})).column == "text hash"
    with pytest.raises(ValueError, match="--holdout-group site: no document has a value in column 'site'"):
        holdout_groups(texts, pa.table({"site": pa.nulls(3, pa.string())}), "site")


def test_cli_splits_by_a_chosen_column_and_names_one_no_input_has(tmp_path: Path, paragraphs: list[str]) -> None:
    positives, negatives = paired_pages(paragraphs, tmp_path)
    common = ["train", "--positive", str(positives), "--negative", str(negatives), "--epoch", "2", "--dim", "8",
              "--bucket", "1000", "--threads", "1"]
    result = CliRunner().invoke(classifier_group, [*common, "--output", str(tmp_path / "m"), "--holdout-group", "id"])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "m" / "model_card.json").read_text())
    held_out = card["training_data"]["documents"]["held_out"]
    assert card["training_data"]["holdout"]["group"] == "id" and held_out["positive"] == held_out["negative"]
    result = CliRunner().invoke(classifier_group, [*common, "--output", str(tmp_path / "n"), "--holdout-group", "site"])
    assert result.exit_code == 2 and "error: --holdout-group site: no document has a value in column 'site'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_model_card_paths_stay_loadable(small_model, tmp_path: Path) -> None:
    small_model.save_model(str(tmp_path / "model.bin"))
    assert FastTextClassifier.load(tmp_path).labels == FastTextClassifier.load(tmp_path / "model.bin").labels
    with pytest.raises(ValueError, match="neither a fastText model file nor a classifier directory"):
        fasttext_model.model_file(tmp_path / "missing")
