"""Mixture sweeps: seeded Dirichlet sampling within repetition caps, resumable proxy runs, predictors that recover a
known answer, the critical mixture ratio, and the report.

The corpus has a built-in ground truth: three generated languages over one shared vocabulary, each with its own word
frequencies and word-to-word transitions, and a target held-out set that is 90% "sea". A mixture heavy in sea must
predict the target best, and the sweep's predictors must find that.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from gristmill.pipeline.engine.report import check_html
from gristmill.stages.tokens.tokenization import DEFAULT_EOS, LoadedTokenizer, save_tokenizer, train_byte_level_bpe
from tests.test_trainer import one_thread, write_export  # noqa: F401  (one_thread: an autouse fixture)
from gristmill.pipeline.cli.trainer import sweep_command
from gristmill.trainer.predict import (
    PredictConfig,
    analyse,
    critical_mixture_ratio,
    fold_assignment,
    held_out_predictions,
    share_law,
)
from gristmill.trainer.sweep import (
    RUN_RESULT,
    SamplingConfig,
    SweepConfig,
    SweepError,
    claim_output,
    draw_mixtures,
    load_sweep,
    run_sweep,
    available_tokens,
    sample_mixtures,
    weight_caps,
)
from gristmill.trainer.sweep_report import CMR_SECTION, SECTIONS
from gristmill.pipeline.tokens.mixture import Component
from tests.test_cluster_balance import exported  # noqa: F401 - an export with source, quality and semantic_cluster

WORDS = ("mill river grain flour bread wheat sack stone wind boat net tide fish salt sail harbour ledger letter permit "
         "clerk court street tower market bell lamp road bridge field barn horse cart rain cloud winter summer morning "
         "evening old young small great quiet busy").split()
DOMAINS = ("farm", "sea", "city")
TARGET = "sea"


class Language:
    """Zipf word frequencies over a domain-specific word order, and two favourite successors per word."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.unigram = np.empty(len(WORDS))
        self.unigram[rng.permutation(len(WORDS))] = 1.0 / (np.arange(len(WORDS)) + 1) ** 1.2
        self.unigram /= self.unigram.sum()
        self.successors = rng.integers(0, len(WORDS), size=(len(WORDS), 2))

    def text(self, rng: np.random.Generator, sentences: int) -> str:
        out = []
        for _ in range(sentences):
            word = int(rng.choice(len(WORDS), p=self.unigram))
            sentence = [WORDS[word]]
            for _ in range(int(rng.integers(5, 10))):
                follows = rng.random() < 0.7
                word = int(self.successors[word][rng.integers(2)]) if follows else int(rng.choice(len(WORDS), p=self.unigram))
                sentence.append(WORDS[word])
            out.append(" ".join(sentence) + ".")
        return " ".join(out)


LANGUAGES = {domain: Language(100 + index) for index, domain in enumerate(DOMAINS)}


def documents(tokenizer: LoadedTokenizer, domains: list[str], seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    texts = [LANGUAGES[domains[rng.integers(len(domains))]].text(rng, int(rng.choice([2, 4, 8]))) for _ in range(count)]
    return [np.asarray(encoding.ids + [tokenizer.eos_id]) for encoding in tokenizer.tokenizer.encode_batch(texts)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Exports of three domains (source = domain), a held-out set per domain, a general and a target held-out set."""
    root = tmp_path_factory.mktemp("sweep")
    rng = np.random.default_rng(0)
    tokenizer = save_tokenizer(
        train_byte_level_bpe([LANGUAGES[domain].text(rng, 20) for domain in DOMAINS for _ in range(100)],
                             vocab_size=300), root / "tokenizer", DEFAULT_EOS, {"test": True})
    for index, domain in enumerate(DOMAINS):
        write_export(root / "exports" / domain, tokenizer, documents(tokenizer, [domain], 10 + index, 400))
        write_export(root / "heldout" / domain, tokenizer, documents(tokenizer, [domain], 20 + index, 40))
    write_export(root / "heldout" / "general", tokenizer, documents(tokenizer, ["farm", "city"], 31, 40))
    write_export(root / "heldout" / "target", tokenizer, documents(tokenizer, [TARGET] * 18 + ["farm", "city"], 30, 60))
    return root


SWEEP = {
    "seed": 3,
    "mixtures": 12,
    "data": [f"exports/{domain}" for domain in DOMAINS],
    "components": {domain: {"source": domain, "max_epochs": 4} for domain in DOMAINS},
    "tokens": 60 * 512,
    "heldout": {**{domain: f"heldout/{domain}" for domain in DOMAINS}, "general": "heldout/general",
                "target": "heldout/target"},
    "target": "target",
    "training": {"tokens_per_step": 512, "warmup_steps": 5, "learning_rate": 5e-3, "cycles": 2, "eval_tokens": 2048,
                 "log_every": 1000},
    "predict": {"bootstrap": 40},
    "cmr": {"domain": [TARGET], "general_heldout": "general", "domain_heldout": TARGET},
    "threads": 1,
}


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def sweep(corpus) -> dict:
    """The sweep, killed after five runs and finished by the CLI, which reuses them."""
    config_path = corpus / "sweep.yaml"
    config_path.write_text(yaml.safe_dump(SWEEP))
    output = corpus / "out"
    finished = []

    def stop_after_five(result: dict) -> None:
        finished.append(result["name"])
        if len(finished) == 5:
            raise Interrupted

    started = time.perf_counter()
    with pytest.raises(Interrupted):
        run_sweep(load_sweep(config_path), output, on_run=stop_after_five)
    result = CliRunner().invoke(sweep_command, ["--input", str(config_path), "--output", str(output)])
    assert result.exit_code == 0, result.output
    return {"config_path": config_path, "output": output, "first_runs": finished, "cli_output": result.output,
            "seconds": time.perf_counter() - started,
            "summary": json.loads((output / "sweep.json").read_text()),
            "report": json.loads((output / "report" / "report.json").read_text())}


def test_sweep_resumes_and_finishes_fast(sweep):
    summary = sweep["summary"]
    assert [run["name"] for run in summary["runs"]] == [f"mix-{index:03d}" for index in range(12)]
    assert summary["reused_runs"] == 5
    for name in sweep["first_runs"]:
        assert f"{name}    reused" in sweep["cli_output"]
    assert sweep["seconds"] < 150, sweep["seconds"]
    for run in summary["runs"]:
        assert sum(run["weights"].values()) == pytest.approx(1.0)
        assert set(run["bits_per_byte"]) == {"farm", "sea", "city", "general", "target"}
        assert run["target_bits_per_byte"] == run["bits_per_byte"]["target"]
        assert 0.5 < run["target_bits_per_byte"] < 4  # learned something, far below ~8 bits per byte at random


def test_runs_respect_budgets_and_repetition_caps(sweep):
    summary = sweep["summary"]
    for run in summary["runs"]:
        header = json.loads((sweep["output"] / "runs" / run["name"] / "plan" / "plan.json").read_text())
        assert header["tokens"] <= SWEEP["tokens"]
        for component in header["components"]:
            assert component["epochs"] <= 4
        for name, weight in run["weights"].items():
            assert weight <= summary["weight_caps"][name] + 1e-9
            sampled = run["sampled_weights"][summary["components"].index(name)]
            assert weight == pytest.approx(sampled, abs=0.02)  # the plan is within a sequence of each budget


def test_a_rerun_run_is_bitwise_identical_and_others_are_reused(sweep):
    output = sweep["output"]
    before = {run["name"]: run for run in sweep["summary"]["runs"]}
    result_path = output / "runs" / "mix-004" / RUN_RESULT
    kept_path = output / "runs" / "mix-005" / RUN_RESULT
    kept_time = kept_path.stat().st_mtime_ns
    result_path.unlink()
    for seed_run in (output / "runs" / "mix-004").glob("seed-*"):
        (seed_run / "checkpoint.pt").unlink()  # neither a checkpoint to resume nor a finished seed: from scratch
        (seed_run / RUN_RESULT).unlink()
    retrained = []
    summary = run_sweep(load_sweep(sweep["config_path"]), output, on_run=lambda result: retrained.append(
        result["name"]) if not result["reused"] else None)
    assert retrained == ["mix-004"] and summary["reused_runs"] == 11
    assert kept_path.stat().st_mtime_ns == kept_time
    assert summary["runs"][4]["bits_per_byte"] == before["mix-004"]["bits_per_byte"]


def test_a_changed_config_is_refused(sweep):
    changed = sweep["config_path"].with_name("changed.yaml")
    changed.write_text(yaml.safe_dump(SWEEP | {"tokens": 40 * 512}))
    with pytest.raises(SweepError, match="made with a different tokens; use another --output"):
        run_sweep(load_sweep(changed), sweep["output"])

    # More mixtures or GPUs per run on the same output extend or move the sweep; they are not refused.
    claim_output(load_sweep(sweep["config_path"]).model_copy(update={"mixtures": 40, "gpus_per_run": 1}),
                 sweep["output"])


def test_predictors_recover_the_domain_that_matters(sweep):
    analysis = sweep["report"]["analysis"]
    summary = sweep["summary"]
    chosen = analysis["predictors"][analysis["chosen"]]
    for kind, result in analysis["predictors"].items():
        assert result["spearman"] > 0.5, (kind, result["spearman"])
        assert max(result["optimum"], key=result["optimum"].get) == TARGET, (kind, result["optimum"])
    assert chosen["spearman"] == max(result["spearman"] for result in analysis["predictors"].values())
    assert chosen["optimum"][TARGET] > summary["natural_prior"][TARGET] + 0.3
    for result in analysis["predictors"].values():
        low, high = result["optimum_interval"][TARGET]
        assert 0 <= low <= high <= 1
        assert result["optimum_loss_interval"][0] <= result["optimum_loss_interval"][1]
    # The smooth model's bootstrap interval for the target domain lies wholly above its natural share.
    assert analysis["predictors"]["loglinear"]["optimum_interval"][TARGET][0] > summary["natural_prior"][TARGET]
    assert chosen["optimum_loss"] < min(run["target_bits_per_byte"] for run in summary["runs"]) + 0.1
    cmr = analysis["cmr"]
    assert 0 <= cmr["critical_ratio"] < 1 and cmr["general_fit"] and cmr["domain_fit"]
    assert "chosen: " + analysis["chosen"] in sweep["cli_output"]


def test_report_has_every_section_and_real_plots(sweep):
    report_dir = sweep["output"] / "report"
    checked = check_html(report_dir / "report.html")
    assert checked["headings"] == ["Mixture sweep", *SECTIONS, CMR_SECTION]
    assert len(checked["images"]) == 4 and all(width >= 500 for width, _ in checked["images"])
    page = (report_dir / "report.html").read_text()
    assert "held-out Spearman ρ" in page and "natural prior" in page and "mix-011" in page
    markdown = (report_dir / "report.md").read_text()
    assert "| component | natural prior | optimum | interval low | interval high | repetition cap |" in markdown
    assert len(list((report_dir / "figures").glob("*.png"))) == 4
    assert sweep["report"]["sweep"]["runs"] == sweep["summary"]["runs"]


@pytest.mark.slow
def test_dask_workers_reproduce_the_local_runs(sweep, tmp_path):
    """Each mixture depends only on (seed, index), so a three-mixture sweep on Dask repeats the first three runs."""
    from gristmill.pipeline.engine.executors import make_executor

    config = load_sweep(sweep["config_path"]).model_copy(update={"mixtures": 3})
    with make_executor("dask", workers=2) as executor:
        summary = run_sweep(config, tmp_path / "dask", executor)
    local = sweep["summary"]["runs"][:3]
    assert [run["weights"] for run in summary["runs"]] == [run["weights"] for run in local]
    assert [run["bits_per_byte"] for run in summary["runs"]] == [run["bits_per_byte"] for run in local]


# Sampling and prediction on their own: no training.

SAMPLING = SamplingConfig()


def test_draws_follow_the_tempered_prior_and_respect_the_caps():
    prior = np.array([0.7, 0.2, 0.1])
    caps = np.array([1.0, 1.0, 0.15])
    draws = draw_mixtures(np.random.default_rng(0), prior, SAMPLING.model_copy(update={"strength": (20.0, 20.0)}),
                          np.ones(3), 20_000)
    tempered = prior**0.5 / (prior**0.5).sum()
    assert draws.mean(axis=0) == pytest.approx(tempered, abs=0.01)
    capped = draw_mixtures(np.random.default_rng(0), prior, SAMPLING, caps, 5000)
    assert np.all(capped <= caps) and np.allclose(capped.sum(axis=1), 1)
    sparse = draw_mixtures(np.random.default_rng(0), prior, SAMPLING.model_copy(update={"minimum_weight": 0.05}),
                           np.ones(3), 5000)
    assert np.all((sparse == 0) | (sparse >= 0.05)) and (sparse == 0).any()
    with pytest.raises(SweepError, match="met the repetition caps"):
        draw_mixtures(np.random.default_rng(0), prior, SAMPLING, np.array([0.2, 0.2, 0.2]), 10)


def test_mixture_i_depends_only_on_seed_and_index():
    config = SweepConfig(mixtures=8, data=["x"], components={"a": {}, "b": {}}, tokens=65_536, heldout={"h": "x"})
    prior, caps = np.array([0.5, 0.5]), np.ones(2)
    eight = sample_mixtures(config, prior, caps)
    assert np.array_equal(sample_mixtures(config.model_copy(update={"mixtures": 3}), prior, caps), eight[:3])
    assert not np.array_equal(sample_mixtures(config.model_copy(update={"seed": 1}), prior, caps), eight)


def test_config_errors_name_the_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(SWEEP | {"components": {"farm": {"source": "farm", "weight": 2}, "sea": {}}}))
    with pytest.raises(SweepError, match="components.farm: the sweep chooses the amounts"):
        load_sweep(path)
    path.write_text(yaml.safe_dump(SWEEP | {"target": "nowhere"}))
    with pytest.raises(SweepError, match="target 'nowhere' is not a held-out set"):
        load_sweep(path)
    path.write_text(yaml.safe_dump(SWEEP | {"training": {"steps": 5}}))
    with pytest.raises(SweepError, match="training: the proxy protocol sets steps itself"):
        load_sweep(path)
    path.write_text(yaml.safe_dump(SWEEP | {"gpus_per_run": 1}))
    result = CliRunner().invoke(sweep_command, ["--input", str(path), "--output", str(tmp_path / "out"), "--executor", "dask"])
    assert result.exit_code == 2 and result.output.startswith("error: gpus_per_run needs --scheduler")
    assert not (tmp_path / "out").exists()


def synthetic_runs(count: int, seed: int, noise: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Mixtures of (a, b, c) whose loss falls with log(b) far more than with the others."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet([1, 1, 1], count)
    loss = 3 - 0.4 * np.log(weights[:, 1] + 0.05) - 0.05 * np.log(weights[:, 2] + 0.05) + rng.normal(0, noise, count)
    return weights, loss


def test_predictors_rank_held_out_runs_and_find_the_known_optimum():
    weights, loss = synthetic_runs(24, seed=0)
    candidates = np.random.default_rng(1).dirichlet([1, 1, 1], 5000)
    config = PredictConfig(simulated=5000, bootstrap=20, top=50)
    analysis = analyse(["a", "b", "c"], weights, loss, candidates, config, seed=0)
    for kind, result in analysis["predictors"].items():
        assert result["spearman"] > 0.7, kind
        assert max(result["optimum"], key=result["optimum"].get) == "b", kind
        low, high = result["optimum_interval"]["b"]
        assert low <= high
    assert analysis["chosen"] == max(analysis["predictors"], key=lambda kind: analysis["predictors"][kind]["spearman"])
    # The true form: loss falls with 0.4·log(b + 0.05) + 0.05·log(c + 0.05), at best with b = 0.928, c = 0.072.
    truth = analysis["predictors"]["loglinear"]["optimum"]
    assert truth["b"] == pytest.approx(0.928, abs=0.05) and truth["c"] == pytest.approx(0.072, abs=0.03)
    # Held-out predictions never see their own run: a run changed alone moves only the other folds' predictions.
    folds = fold_assignment(24, 5, seed=0)
    changed = loss.copy()
    changed[0] += 10
    first, second = (held_out_predictions("linear", weights, values, 5, 0) for values in (loss, changed))
    assert first[0] == pytest.approx(second[0])
    assert not np.allclose(first[folds != folds[0]], second[folds != folds[0]])


def test_critical_mixture_ratio_matches_the_law_it_was_drawn_from():
    ratio = np.linspace(0.0, 0.9, 15)
    general = share_law(1 - ratio, 2.0, 0.3, 1.0)
    domain = share_law(ratio, 1.5, 0.2, 0.5)
    result = critical_mixture_ratio(ratio, general, domain, tolerance=0.02)
    assert result["general_fit"]["exponent"] == pytest.approx(1.0, abs=1e-3)
    # 2 + 0.3 / (1 - R) = 1.02 × 2.3  ⇒  R = 1 − 0.3 / 0.346
    assert result["critical_ratio"] == pytest.approx(1 - 0.3 / 0.346, abs=2e-3)
    assert result["domain_loss_at_critical_ratio"] == pytest.approx(
        float(share_law(np.array(result["critical_ratio"]), 1.5, 0.2, 0.5)), rel=1e-3)



def test_available_tokens_select_by_level_and_a_balanced_component_is_capped_by_max_repeats(exported):
    """Components may select by an integer column (quality levels) and balance by clusters, as mixtures do."""
    plain = {key: value for key, value in SWEEP.items() if key != "cmr"}
    config = SweepConfig.model_validate(plain | {"tokens": 1024, "data": [str(exported / "export")], "components": {
        "first": {"source": "cc", "quality_bucket": {"column": "semantic_cluster", "max": 0}},
        "others": {"source": "cc", "quality_bucket": {"column": "semantic_cluster", "min": 1},
                   "balance": {"column": "semantic_cluster", "max_repeats": 3}}}})
    available = available_tokens(config)
    assert (available > 0).all()
    default_epochs = Component.model_validate({"weight": 1.0}).max_epochs
    caps = weight_caps(config, available)
    assert caps[1] / caps[0] == pytest.approx(available[1] * 3 / (available[0] * default_epochs))
