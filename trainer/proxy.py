"""`gristmill proxy`: train the same small model on each candidate dataset or mixture and rank them by bits per byte.

Equal token budgets, the same seeds (so the same initial weights and curriculum draws) and the same held-out sets,
so what differs between runs is the data alone; several seeds give the spread the ranking must beat.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path


from gristmill.pipeline.tokens.mixture import PLAN_HEADER
from gristmill.trainer.data import load_mixture_plan, shuffled_plan
from gristmill.trainer.config import ProxyConfig, TrainConfig
from gristmill.trainer.train import train

REPORT = "proxy.json"
def is_plan(paths: list[str]) -> bool:
    return len(paths) == 1 and (Path(paths[0]).name == PLAN_HEADER or (Path(paths[0]) / PLAN_HEADER).exists())


def run_config(config: ProxyConfig, name: str, seed: int, vocab_size: int) -> TrainConfig:
    paths = config.candidates[name]
    data = {"plan": paths[0]} if is_plan(paths) else {"data": paths}
    return TrainConfig(**config.training, **data, output=str(Path(config.output) / name / f"seed-{seed}"),
                       heldout=config.heldout, steps=config.steps, seed=seed, vocab_size=vocab_size)


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def run_proxy(config: ProxyConfig, on_run: Callable[[str, int, dict], None] | None = None) -> dict:
    """Train every candidate once per seed and rank them by mean bits per byte over the held-out sets."""
    plans = {name: load_mixture_plan(paths[0]) if is_plan(paths) else shuffled_plan(paths, 0)
             for name, paths in config.candidates.items()}
    vocab_size = max(plan.vocabulary_size() for plan in plans.values())  # one vocabulary: identical initial weights
    scores: dict[str, dict[int, dict[str, float]]] = {name: {} for name in config.candidates}
    for seed in config.seeds:
        for name in config.candidates:
            metrics = train(run_config(config, name, seed, vocab_size))
            scores[name][seed] = metrics["final_bits_per_byte"]
            if on_run:
                on_run(name, seed, metrics)
    candidates = {}
    for name, by_seed in scores.items():
        averages = [statistics.fmean(values.values()) for values in by_seed.values()]
        candidates[name] = {
            "bits_per_byte": {heldout: statistics.fmean(by_seed[seed][heldout] for seed in config.seeds)
                              for heldout in config.heldout},
            "bits_per_byte_spread": {heldout: spread([by_seed[seed][heldout] for seed in config.seeds])
                                     for heldout in config.heldout},
            "mean_bits_per_byte": statistics.fmean(averages),
            "mean_spread": spread(averages),
            "per_seed": {str(seed): by_seed[seed] for seed in config.seeds},
        }
    ranking = sorted(candidates, key=lambda name: candidates[name]["mean_bits_per_byte"])
    winner, runner_up = ranking[0], ranking[1]
    best_seed_of_runner_up = min(statistics.fmean(values.values()) for values in scores[runner_up].values())
    worst_seed_of_winner = max(statistics.fmean(values.values()) for values in scores[winner].values())
    report = {
        "tokens_per_run": config.steps * config.tokens_per_step,
        "steps": config.steps,
        "seeds": config.seeds,
        "heldout": config.heldout,
        "ranking": ranking,
        "winner": winner,
        "margin_bits_per_byte": candidates[runner_up]["mean_bits_per_byte"] - candidates[winner]["mean_bits_per_byte"],
        # The winner's worst seed beats the runner-up's best: the ranking does not hang on one lucky seed.
        "separated_across_seeds": worst_seed_of_winner < best_seed_of_runner_up,
        "candidates": candidates,
    }
    Path(config.output).mkdir(parents=True, exist_ok=True)
    (Path(config.output) / REPORT).write_text(json.dumps(report, indent=2))
    return report
