"""`gristmill sweep`: sample mixtures around the natural token prior (RegMix), train a proxy run on each, collect bits per byte.

Every mixture is compiled by the ordinary mixture compiler, so budgets and repetition caps hold exactly; its seeds
train under the one proxy-run protocol (trainer/protocol.py), and each mixture and seed keeps its own directory and
result file, so an interrupted sweep resumes and reuses the runs it finished.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gristmill.pipeline.engine.files import write_json_atomic
from gristmill.pipeline.tokens.mixture import (
    Component,
    Mixture,
    compile_plan,
    load_pool,
    needed_columns,
    selection_mask,
    write_plan,
)
from gristmill.pipeline.engine.config_files import validated_yaml
from gristmill.pipeline.engine.dataset import DatasetError
from gristmill.pipeline.engine.ownership import claim
from gristmill.trainer.predict import PredictConfig
from gristmill.trainer.protocol import RUN_RESULT, ProxyProtocol, ProxyRun, run_all

STATE = "_sweep.json"
RESULTS = "sweep.json"
# Settings that change how the results are read, how many runs there are (mixture i depends only on the seed and
# i, so a longer sweep extends a shorter one) or where runs go, not what a run computes: a resumed sweep may change them.
READING_SETTINGS = {"predict", "cmr", "mixtures", "gpus_per_run"}


class SweepError(Exception):
    """A sweep cannot start or finish; the message is one line naming the file, field or run."""


class SamplingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    prior: dict[str, float] | None = Field(None, description="Prior weights per component (default: available tokens).")
    temperature: float = Field(0.5, gt=0, le=1, description="The prior is raised to this power and renormalised, "
                                                            "which flattens a skewed prior.")
    strength: tuple[float, float] = Field((0.1, 5.0), description="Dirichlet concentration range, drawn log-uniformly "
                                                                  "per mixture: small gives sparse mixtures.")
    minimum_weight: float = Field(0.0, ge=0, lt=1, description="Weights below this become zero (then renormalised).")

    @field_validator("strength")
    @classmethod
    def ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError("strength must be two positive numbers, low then high")
        return value


class CMRConfig(BaseModel):
    """Two groups, general against domain, for the critical mixture ratio."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    domain: list[str] = Field(min_length=1, description="Components of the domain group; the others are general.")
    general_heldout: str = Field(description="Held-out set measuring general ability.")
    domain_heldout: str = Field(description="Held-out set measuring the domain.")
    tolerance: float = Field(0.01, gt=0, description="Relative rise of general loss allowed at the critical ratio.")


class SweepConfig(ProxyProtocol):
    """The mixtures to sample and how; `tokens`, `seeds` and `training` are the proxy protocol's, shared by every run."""

    seed: int = Field(0, ge=0, description="Seeds the mixtures, their plans and the predictors.")
    mixtures: int = Field(ge=3, description="Mixtures to sample and train.")
    data: list[str] = Field(min_length=1, description="Export directories (relative paths: to the YAML file).")
    components: dict[str, dict[str, Any]] = Field(
        min_length=2, description="Selections as in a mixture (source, buckets, quality, max_epochs), without amounts.")
    heldout: dict[str, str] = Field(min_length=1, description="Held-out sets NAME: PATH, scored in bits per byte.")
    target: str | None = Field(None, description="Held-out set whose bits per byte the predictors minimise "
                                                 "(default: the mean over all held-out sets).")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    cmr: CMRConfig | None = Field(None, description="General against domain groups for the critical mixture ratio.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads per run (default: torch's choice).")
    gpus_per_run: int = Field(0, ge=0, description="GPUs a run needs; on Dask, runs go only to workers started with "
                                                   "--resources GPU=N.")

    @model_validator(mode="after")
    def consistent(self) -> SweepConfig:
        for name, selection in self.components.items():
            if {"tokens", "weight"} & set(selection):
                raise ValueError(f"components.{name}: the sweep chooses the amounts; give no tokens or weight")
            Component.model_validate(selection | {"weight": 1.0})
        if self.target is not None and self.target not in self.heldout:
            raise ValueError(f"target {self.target!r} is not a held-out set ({', '.join(self.heldout)})")
        if self.sampling.prior is not None and set(self.sampling.prior) != set(self.components):
            raise ValueError("sampling.prior must give a weight for every component, and only for them")
        if self.cmr is not None:
            unknown = set(self.cmr.domain) - set(self.components)
            missing = {self.cmr.general_heldout, self.cmr.domain_heldout} - set(self.heldout)
            if unknown or missing:
                raise ValueError(f"cmr: unknown {'component' if unknown else 'held-out set'} "
                                 f"{sorted(unknown or missing)[0]!r}")
            if set(self.cmr.domain) == set(self.components):
                raise ValueError("cmr: the general group is empty")
        return self

    @property
    def names(self) -> list[str]:
        return list(self.components)


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep YAML; data and held-out paths are made absolute (relative to the file)."""
    path = Path(path)
    config = validated_yaml(path, SweepConfig, SweepError)
    base = path.parent.resolve()
    return config.model_copy(update={"data": [str(base / item) for item in config.data],
                                     "heldout": {name: str(base / item) for name, item in config.heldout.items()}})


def mixture_of(config: SweepConfig, budgets: dict[str, int]) -> Mixture:
    """The mixture training `budgets[name]` tokens of each component; components with no budget are left out."""
    return Mixture(seed=config.seed, data=config.data, components={
        name: Component.model_validate(config.components[name] | {"tokens": budget})
        for name, budget in budgets.items() if budget > 0})


def available_tokens(config: SweepConfig) -> np.ndarray:
    """Tokens each component selects from the exports."""
    selections = mixture_of(config, {name: 1 for name in config.names})
    pool = load_pool(selections, Path("."), needed_columns(selections))
    return np.array([int(pool.tokens[selection_mask(selections.components[name], pool)].sum())
                     for name in config.names], np.int64)


def natural_prior(config: SweepConfig, available: np.ndarray) -> np.ndarray:
    """The prior the Dirichlet is centred on: the given weights, or each component's share of the available tokens."""
    prior = (np.array([config.sampling.prior[name] for name in config.names], float) if config.sampling.prior
             else available.astype(float))
    if prior.sum() <= 0:
        raise SweepError("the components select no tokens")
    return prior / prior.sum()


def weight_caps(config: SweepConfig, available: np.ndarray) -> np.ndarray:
    """The largest weight of each component that its repetition cap allows at `config.tokens` per run."""
    epochs = np.array([Component.model_validate(config.components[name] | {"weight": 1.0}).repetition_cap
                       for name in config.names])
    caps = available * epochs / config.tokens
    if caps.sum() < 1:
        raise SweepError(f"the components hold {int((available * epochs).sum()):,} tokens within their repetition "
                         f"caps, fewer than the {config.tokens:,} tokens of a run")
    return caps


def draw_mixtures(rng: np.random.Generator, prior: np.ndarray, sampling: SamplingConfig, caps: np.ndarray,
                  count: int) -> np.ndarray:
    """`count` mixtures from the Dirichlet around the tempered prior, strength log-uniform, that respect the caps.

    Draws failing a cap are rejected (RegMix's bound), so the result follows the Dirichlet truncated to the caps.
    """
    centre = prior**sampling.temperature
    centre = centre / centre.sum()
    low, high = np.log(sampling.strength[0]), np.log(sampling.strength[1])
    kept, found, drawn = [], 0, 0
    while found < count:
        batch = max(256, 2 * (count - found))
        if drawn > 1000 * count + 100_000:
            raise SweepError(f"only {found} of {count} Dirichlet draws met the repetition caps; "
                             "raise max_epochs, lower tokens or give a prior closer to the available tokens")
        strength = np.exp(rng.uniform(low, high, size=(batch, 1)))
        gamma = rng.standard_gamma(np.maximum(centre * strength, 1e-12))
        totals = gamma.sum(axis=1, keepdims=True)
        weights = np.divide(gamma, totals, out=np.zeros_like(gamma), where=totals > 0)
        weights[weights < sampling.minimum_weight] = 0.0
        totals = weights.sum(axis=1, keepdims=True)
        weights = np.divide(weights, totals, out=np.zeros_like(weights), where=totals > 0)
        good = weights[(totals[:, 0] > 0) & np.all(weights <= caps, axis=1)]
        kept.append(good[:count - found])
        found += len(kept[-1])
        drawn += batch
    return np.concatenate(kept)


def sample_mixtures(config: SweepConfig, prior: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """The sweep's mixtures: mixture i depends only on (seed, i), so a longer sweep extends a shorter one."""
    return np.stack([draw_mixtures(np.random.default_rng([config.seed, index]), prior, config.sampling, caps, 1)[0]
                     for index in range(config.mixtures)])


def simulated_mixtures(config: SweepConfig, prior: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """The mixtures the predictors search for an optimum, from the same truncated Dirichlet as the runs."""
    return draw_mixtures(np.random.default_rng([config.seed, 2**32]), prior, config.sampling, caps,
                         config.predict.simulated)


@dataclass(frozen=True)
class MixtureRun:
    """One mixture's proxy runs: a plan already written, and one protocol run per seed."""

    name: str
    index: int
    weights: tuple[float, ...]
    directory: str
    seeds: tuple[ProxyRun, ...]


def write_atomically(payload: dict, path: Path) -> None:
    write_json_atomic(path, json.dumps(payload, indent=2) + "\n")


def run_mixture(run: MixtureRun) -> dict:
    """Train every seed of one mixture through the protocol (each resuming its checkpoint, a finished seed read
    back) and write the mixture's result; reuse a finished one."""
    result_path = Path(run.directory) / RUN_RESULT
    if result_path.exists():
        return json.loads(result_path.read_text()) | {"reused": True}
    started = time.perf_counter()
    results = run_all(list(run.seeds))  # one after another in this task
    per_seed = {str(seed_run.seed): results[seed_run.candidate, seed_run.seed]["bits_per_byte"]
                for seed_run in run.seeds}
    header = json.loads((Path(run.directory) / "plan" / "plan.json").read_text())
    planned = {item["name"]: item["tokens"] for item in header["components"]}
    heldout = list(next(iter(per_seed.values())))
    result = {
        "name": run.name, "index": run.index, "sampled_weights": list(run.weights),
        "tokens": planned, "seconds": time.perf_counter() - started,
        "bits_per_byte": {name: float(np.mean([scores[name] for scores in per_seed.values()])) for name in heldout},
        "per_seed": per_seed,
    }
    write_atomically(result, result_path)
    return result | {"reused": False}


def config_fingerprint(config: SweepConfig) -> str:
    settings = config.model_dump(mode="json", exclude=READING_SETTINGS)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def claim_output(config: SweepConfig, output: Path) -> None:
    """Record the config a sweep directory is built with; a different one is refused, naming what changed.
    The directory must be Gristmill's (absent, empty or marked), as for every output."""
    try:
        claim(output)
    except DatasetError as error:
        raise SweepError(str(error)) from None
    state_path = output / STATE
    settings = config.model_dump(mode="json", exclude=READING_SETTINGS)
    if state_path.exists():
        previous = json.loads(state_path.read_text())
        if previous["fingerprint"] != config_fingerprint(config):
            changed = sorted(key for key in settings if previous["settings"].get(key) != settings[key])
            raise SweepError(f"{output} holds a sweep made with a different {', '.join(changed) or 'config'}; "
                             "use another --output or the same settings")
        return
    write_atomically({"fingerprint": config_fingerprint(config), "settings": settings}, state_path)


def prepare_runs(config: SweepConfig, output: Path, mixtures: np.ndarray) -> list[MixtureRun]:
    """A plan and training configs for every mixture; plans of finished runs are not rewritten."""
    runs, vocab_size = [], None
    for index, weights in enumerate(mixtures):
        name = f"mix-{index:03d}"
        directory = output / "runs" / name
        plan_dir = directory / "plan"
        if not (directory / RUN_RESULT).exists():
            budgets = dict(zip(config.names, np.floor(weights * config.tokens).astype(int).tolist()))
            header, rows = compile_plan(mixture_of(config, budgets), Path("."), name)
            write_plan(header, rows, plan_dir)
            if vocab_size is None:
                vocab_size = 64 * -(-int(header["tokenizer"]["vocab_size"]) // 64)  # one vocabulary for every run
        seeds = tuple(
            ProxyRun(name, seed, config.train_config(directory / f"seed-{seed}", seed, config.heldout, vocab_size,
                                                     plan=str(plan_dir)), config.threads)
            for seed in config.seeds)
        runs.append(MixtureRun(name, index, tuple(float(value) for value in weights), str(directory), seeds))
    return runs


def run_sweep(config: SweepConfig, output: str | Path, executor: Any = None,
              on_run: Callable[[dict], None] | None = None) -> dict:
    """Sample the mixtures, run what is not finished (on `executor`, else one after another here), collect the results.

    Writes OUTPUT/sweep.json and returns it: the prior, caps and every run's weights and bits per byte.
    """
    from gristmill.pipeline.engine.executors import InProcessExecutor

    output = Path(output).resolve()
    claim_output(config, output)
    available = available_tokens(config)
    prior = natural_prior(config, available)
    caps = weight_caps(config, available)
    mixtures = sample_mixtures(config, prior, caps)
    simulated_mixtures(config, prior, caps)  # caps too tight for the predictors' search fail now, not after training
    runs = prepare_runs(config, output, mixtures)
    executor = executor or InProcessExecutor()
    resources = {"GPU": config.gpus_per_run} if config.gpus_per_run else None
    finished, failed = {}, []
    started = time.perf_counter()
    for run, result in executor.map_unordered(run_mixture, runs, resources):
        if isinstance(result, BaseException):
            failed.append(f"{run.name}: {type(result).__name__}: {result}")
            continue
        finished[run.name] = result
        if on_run:
            on_run(result)
    if failed:
        raise SweepError(f"{len(failed)} of {len(runs)} runs failed (rerun to resume): {failed[0]}")
    results = [finished[run.name] for run in runs]
    summary = {
        "format": "gristmill.sweep", "version": 1, "seed": config.seed, "components": config.names,
        "heldout": list(config.heldout), "target": config.target or "mean",
        "tokens_per_run": config.tokens_per_run, "steps": config.steps, "seeds": config.seeds,
        "available_tokens": dict(zip(config.names, available.tolist())),
        "natural_prior": dict(zip(config.names, prior.tolist())),
        "weight_caps": dict(zip(config.names, np.minimum(caps, 1).tolist())),
        "reused_runs": sum(result["reused"] for result in results),
        "seconds": time.perf_counter() - started,
        "runs": [{key: value for key, value in result.items() if key != "reused"}
                 | {"weights": planned_shares(result, config.names), "target_bits_per_byte": target_of(result, config)}
                 for result in results],
    }
    write_atomically(summary, output / RESULTS)
    return summary


def planned_shares(result: dict, names: list[str]) -> dict[str, float]:
    """Each component's exact share of the run's planned tokens (what the run really trained on)."""
    total = sum(result["tokens"].values())
    return {name: result["tokens"].get(name, 0) / total for name in names}


def target_of(result: dict, config: SweepConfig) -> float:
    scores = result["bits_per_byte"]
    return scores[config.target] if config.target else float(np.mean(list(scores.values())))


def predict_sweep(config: SweepConfig, summary: dict) -> dict:
    """Fit the predictors on the runs' weights and target bits per byte; add the critical mixture ratio if asked."""
    from gristmill.trainer.predict import analyse, critical_mixture_ratio

    available = np.array([summary["available_tokens"][name] for name in config.names])
    prior = natural_prior(config, available)
    caps = weight_caps(config, available)
    weights = np.array([[run["weights"][name] for name in config.names] for run in summary["runs"]])
    loss = np.array([run["target_bits_per_byte"] for run in summary["runs"]])
    analysis = analyse(config.names, weights, loss, simulated_mixtures(config, prior, caps), config.predict,
                       config.seed)
    if config.cmr is not None:
        ratio = weights[:, [config.names.index(name) for name in config.cmr.domain]].sum(axis=1)
        general = np.array([run["bits_per_byte"][config.cmr.general_heldout] for run in summary["runs"]])
        domain = np.array([run["bits_per_byte"][config.cmr.domain_heldout] for run in summary["runs"]])
        analysis["cmr"] = critical_mixture_ratio(ratio, general, domain, config.cmr.tolerance) | {
            "domain": config.cmr.domain, "general_heldout": config.cmr.general_heldout,
            "domain_heldout": config.cmr.domain_heldout, "ratios": ratio.tolist()}
    return analysis
