"""The one proxy-run protocol under `proxy`, `classifier select-seeds`, `sweep` and `ablate`.

Every run of a comparison trains the same model for the same tokens with the same seeds (so the same initial weights
and the same draws), is scored by the same held-out scorer (bits per byte over whole held-out documents, in rows of
one length), resumes from its checkpoint after a kill, and is compared with its seed spread: a paired bootstrap
interval over seeds and a separation flag (the worst seed of one beats the best seed of the other).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gristmill.pipeline.engine.files import write_json_atomic
from gristmill.trainer.config import TrainConfig

RUN_RESULT = "result.json"
# Settings the protocol decides per run; a comparison's shared `training` settings may not name them.
PER_RUN = {"output", "data", "plan", "heldout", "steps", "seed", "vocab_size", "eval_seq_len"}
CURVE_POINTS = 200  # loss-curve points kept per run in results and reports
BOOTSTRAP_RESAMPLES = 2000


class ProxyError(Exception):
    """Proxy runs cannot start or some failed; the message is one line naming the run."""


class ProxyProtocol(BaseModel):
    """What every run of one comparison shares: the token budget, the seeds and the training settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: int = Field(ge=1, description="Training tokens per run, the same for every candidate.")
    seeds: list[int] = Field([0], min_length=1, description="Seeds; each candidate is trained once per seed.")
    training: dict[str, Any] = Field(default_factory=dict, description="Other TrainConfig settings, shared by all runs.")

    @model_validator(mode="after")
    def runs_are_comparable(self) -> ProxyProtocol:
        if fixed := PER_RUN & set(self.training):
            raise ValueError(f"training: the proxy protocol sets {', '.join(sorted(fixed))} itself")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        TrainConfig(**self.training, output=".", data=["-"])  # a bad shared setting fails here, once
        if self.steps < 1:
            raise ValueError(f"tokens {self.tokens} is less than one step of {self.tokens_per_step} tokens")
        return self

    @property
    def tokens_per_step(self) -> int:
        return int(self.training.get("tokens_per_step", TrainConfig.model_fields["tokens_per_step"].default))

    @property
    def steps(self) -> int:
        return self.tokens // self.tokens_per_step

    @property
    def tokens_per_run(self) -> int:
        return self.steps * self.tokens_per_step

    def train_config(self, output: Path | str, seed: int, heldout: dict[str, str], vocab_size: int | None,
                     data: list[str] | None = None, plan: str | None = None, **per_candidate: Any) -> TrainConfig:
        """One run's settings: the shared ones, the protocol's budget and scorer, and what the candidate varies
        (`per_candidate`, e.g. batching for a batching comparison)."""
        settings = {**self.training, **per_candidate}
        seq_len = settings.get("seq_len", TrainConfig.model_fields["seq_len"].default)
        settings.setdefault("checkpoint_every", max(1, self.steps // 10))  # a killed run loses at most a tenth
        return TrainConfig(**settings, output=str(output), seed=seed, heldout=heldout, vocab_size=vocab_size,
                           steps=self.steps, eval_seq_len=seq_len, **({"plan": plan} if plan else {"data": data}))


@dataclass(frozen=True)
class ProxyRun:
    """One training run of a comparison: a candidate, a seed, its settings and torch threads (None: leave as is)."""

    candidate: str
    seed: int
    config: TrainConfig
    threads: int | None = None


def loss_curve(history: list[dict]) -> list[list[float]]:
    """At most CURVE_POINTS (tokens, loss) pairs, evenly spaced over the run, the last step always included."""
    keep = np.unique(np.linspace(0, len(history) - 1, min(len(history), CURVE_POINTS)).round().astype(int))
    return [[history[index]["tokens"], round(history[index]["loss"], 6)] for index in keep.tolist()]


def run_one(run: ProxyRun) -> dict[str, Any]:
    """Train one run (resuming its checkpoint) and write its result; a run that finished before is read back."""
    result_path = Path(run.config.output) / RUN_RESULT
    if result_path.exists():
        return json.loads(result_path.read_text()) | {"reused": True}
    import torch

    from gristmill.trainer.train import train  # torch loads only where runs train

    threads = torch.get_num_threads()
    if run.threads:
        torch.set_num_threads(run.threads)
    started = time.perf_counter()
    try:
        metrics = train(run.config)
    finally:
        torch.set_num_threads(threads)
    result = {
        "candidate": run.candidate, "seed": run.seed,
        "bits_per_byte": metrics["final_bits_per_byte"],
        "final_loss": metrics["final_loss"],
        "steps": len(metrics["history"]),
        "tokens_trained": sum(record["step_tokens"] for record in metrics["history"]),
        "training_seconds": sum(record["seconds"] for record in metrics["history"]),
        "seconds": time.perf_counter() - started,
        "loss_curve": loss_curve(metrics["history"]),
    }
    write_json_atomic(result_path, json.dumps(result, indent=2) + "\n")
    return result | {"reused": False}


def run_one_or_error(run: ProxyRun) -> dict[str, Any] | BaseException:
    """`run_one`, with a failure returned instead of raised, so the other runs of an in-process comparison go on."""
    try:
        return run_one(run)
    except Exception as error:  # noqa: BLE001 - reported with the run's name once every run has been tried
        return error


def uses_cuda(config: TrainConfig) -> bool:
    if config.device.startswith("cuda"):
        return True
    if config.device != "auto":
        return False
    import torch

    return torch.cuda.is_available()


def run_all(runs: list[ProxyRun], executor: Any = None,
            on_result: Callable[[ProxyRun, dict], None] | None = None) -> dict[tuple[str, int], dict]:
    """Every run as a task on `executor` (default: one after another here); Dask tasks declare a GPU when the
    runs train on CUDA. All runs are tried; failures are reported together after the others finish."""
    from gristmill.pipeline.engine.executors import InProcessExecutor

    if not runs:
        return {}
    executor = executor or InProcessExecutor()
    resources = {"GPU": 1} if uses_cuda(runs[0].config) else None
    results, failed = {}, []
    for run, result in executor.map_unordered(run_one_or_error, runs, resources):
        if isinstance(result, BaseException):
            failed.append(f"{run.candidate} seed {run.seed}: {type(result).__name__}: {result}")
            continue
        results[run.candidate, run.seed] = result
        if on_result:
            on_result(run, result)
    if failed:
        raise ProxyError(f"{len(failed)} of {len(runs)} proxy runs failed (rerun to resume): {failed[0]}")
    return results


def seed_statistics(per_seed: dict[int, float]) -> dict[str, Any]:
    values = list(per_seed.values())
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": {str(seed): value for seed, value in per_seed.items()}}


def target_score(bits_per_byte: dict[str, float], target: str | None) -> float:
    """The number a comparison ranks by: one held-out set's bits per byte, or the mean over all of them."""
    return bits_per_byte[target] if target else statistics.fmean(bits_per_byte.values())


def candidate_scores(results: dict[tuple[str, int], dict], candidate: str, seeds: Iterable[int],
                     target: str | None = None) -> dict[str, Any]:
    """A candidate's bits per byte on each held-out set and on the target, with seed spread and every seed."""
    by_seed = {seed: results[candidate, seed]["bits_per_byte"] for seed in seeds}
    heldout = list(next(iter(by_seed.values())))
    return {
        "bits_per_byte": {name: seed_statistics({seed: scores[name] for seed, scores in by_seed.items()})
                          for name in heldout},
        "target_bits_per_byte": seed_statistics({seed: target_score(scores, target)
                                                 for seed, scores in by_seed.items()}),
    }


def compare(this: dict[str, float], that: dict[str, float], confidence: float = 0.95,
            resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
    """`this` minus `that` (per-seed scores, keyed by seed): the mean paired difference, a bootstrap interval over
    seeds, and whether the two are separated (every seed of one beats every seed of the other)."""
    seeds = sorted(set(this) & set(that), key=str)
    if not seeds:
        raise ValueError("the two candidates share no seed")
    differences = np.array([this[seed] - that[seed] for seed in seeds])
    draws = np.random.default_rng(0).integers(0, len(seeds), size=(resamples, len(seeds)))
    means = differences[draws].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    ours, theirs = [this[seed] for seed in seeds], [that[seed] for seed in seeds]
    return {
        "delta": float(differences.mean()),
        "interval": [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))],
        "separated": max(ours) < min(theirs) or min(ours) > max(theirs),
        "seeds": len(seeds),
    }


def rank(scores: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Candidates best first by mean target bits per byte, the winner's margin over the runner-up and whether the
    two are separated across seeds."""
    ranking = sorted(scores, key=lambda name: scores[name]["target_bits_per_byte"]["mean"])
    winner, runner_up = ranking[0], ranking[1]
    comparison = compare(scores[runner_up]["target_bits_per_byte"]["per_seed"],
                         scores[winner]["target_bits_per_byte"]["per_seed"])
    return {"ranking": ranking, "winner": winner, "runner_up": runner_up, "margin_bits_per_byte": comparison["delta"],
            "margin_interval": comparison["interval"], "separated_across_seeds": comparison["separated"]}


def write_heldout_documents(texts: Iterable[list[str]], tokenizer: Any, prefix: Path) -> dict[str, Any]:
    """The held-out scorer's input: each text one whole EOS-terminated document in an indexed dataset, with a
    sidecar naming the tokenizer so bits per byte decode the same bytes in every run."""
    from gristmill.pipeline.tokens.indexed_dataset import IndexedDatasetWriter, token_dtype

    prefix.parent.mkdir(parents=True, exist_ok=True)
    writer = IndexedDatasetWriter(prefix, token_dtype(tokenizer.vocab_size))
    for batch in texts:
        if not batch:
            continue
        encoded = tokenizer.encode(batch)
        lengths = np.diff(encoded.offsets.to_numpy())
        writer.add_batch(encoded.values.to_numpy(), lengths, np.ones(len(lengths), np.int64))
    written = writer.finish()
    sidecar = {"prefix": prefix.name, "mode": "documents", "tokens": written.tokens, "sequences": written.documents,
               "tokenizer": tokenizer.describe(), "checksums": {"bin": written.bin_checksum, "idx": written.idx_checksum}}
    write_json_atomic(Path(f"{prefix}.json"), json.dumps(sidecar, indent=2))
    return sidecar
