"""`gristmill proxy`: train the same small model on each candidate dataset or mixture and rank them by bits per byte.

The runs follow the one proxy-run protocol (trainer/protocol.py): equal token budgets, the same seeds and the same
held-out scorer, so what differs between runs is the data alone; the ranking reports its margin against the seed spread.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from gristmill.pipeline.engine.files import write_json_atomic
from gristmill.pipeline.tokens.mixture import PLAN_HEADER
from gristmill.trainer.data import load_mixture_plan, shuffled_plan
from gristmill.trainer.protocol import ProxyProtocol, ProxyRun, candidate_scores, rank, run_all

REPORT = "proxy.json"


class ProxyConfig(ProxyProtocol):
    """A dataset comparison: the protocol's budget, seeds and training settings, and what is compared."""

    output: str = Field(description="Directory for one run per candidate and seed, and proxy.json.")
    candidates: dict[str, list[str]] = Field(description="NAME=PATH[,PATH...]: export directories, or one mixture plan directory.")
    heldout: dict[str, str] = Field(min_length=1, description="Held-out sets NAME=PATH, scored in bits per byte.")

    @model_validator(mode="after")
    def two_candidates(self) -> ProxyConfig:
        if len(self.candidates) < 2:
            raise ValueError("a proxy comparison needs at least two candidates")
        return self


def is_plan(paths: list[str]) -> bool:
    return len(paths) == 1 and (Path(paths[0]).name == PLAN_HEADER or (Path(paths[0]) / PLAN_HEADER).exists())


def proxy_runs(config: ProxyConfig) -> list[ProxyRun]:
    """One run per seed and candidate, in OUTPUT/NAME/seed-S, all with one vocabulary (so identical initial weights)."""
    plans = {name: load_mixture_plan(paths[0]) if is_plan(paths) else shuffled_plan(paths, 0)
             for name, paths in config.candidates.items()}
    vocab_size = max(plan.vocabulary_size() for plan in plans.values())
    runs = []
    for seed in config.seeds:
        for name, paths in config.candidates.items():
            data = {"plan": paths[0]} if is_plan(paths) else {"data": paths}
            settings = config.train_config(Path(config.output) / name / f"seed-{seed}", seed, config.heldout,
                                           vocab_size, **data)
            runs.append(ProxyRun(name, seed, settings))
    return runs


def run_proxy(config: ProxyConfig, on_run: Callable[[ProxyRun, dict], None] | None = None,
              executor: Any = None) -> dict:
    """Train every candidate once per seed (on `executor`, else here; finished runs are reused) and rank them by
    mean bits per byte over the held-out sets. Writes OUTPUT/proxy.json and returns it."""
    results = run_all(proxy_runs(config), executor, on_run)
    candidates = {}
    for name in config.candidates:
        scores = candidate_scores(results, name, config.seeds)
        candidates[name] = scores | {
            "bits_per_byte": {heldout: value["mean"] for heldout, value in scores["bits_per_byte"].items()},
            "bits_per_byte_spread": {heldout: value["std"] for heldout, value in scores["bits_per_byte"].items()},
            "mean_bits_per_byte": scores["target_bits_per_byte"]["mean"],
            "mean_spread": scores["target_bits_per_byte"]["std"],
            "per_seed": {str(seed): results[name, seed]["bits_per_byte"] for seed in config.seeds},
        }
    ranking = rank(candidates)
    report = {
        "tokens_per_run": config.tokens_per_run,
        "steps": config.steps,
        "seeds": config.seeds,
        "heldout": config.heldout,
        "ranking": ranking["ranking"],
        "winner": ranking["winner"],
        "runner_up": ranking["runner_up"],
        "margin_bits_per_byte": ranking["margin_bits_per_byte"],
        # A paired bootstrap interval over seeds of the runner-up's minus the winner's bits per byte.
        "margin_interval": ranking["margin_interval"],
        # The winner's worst seed beats the runner-up's best: the ranking does not hang on one lucky seed.
        "separated_across_seeds": ranking["separated_across_seeds"],
        "candidates": candidates,
    }
    write_json_atomic(Path(config.output) / REPORT, json.dumps(report, indent=2))
    return report
