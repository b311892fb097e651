"""Choose a quality classifier's positive seed set by short proxy training runs (the Ultra-FineWeb recipe).

A seed set is judged by what training on it does to a small model, not by how it reads. `ProxyRunner` is the
interface; `TrainerProxyRunner` implements it with the bundled trainer under the one proxy-run protocol
(trainer/protocol.py), as `gristmill classifier select-seeds`.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from gristmill.classifiers.documents import read_documents
from gristmill.pipeline.engine.config_files import describe_validation_error
from gristmill.trainer.protocol import ProxyProtocol, ProxyRun, candidate_scores, run_all, write_heldout_documents


@dataclass(frozen=True)
class SeedCandidate:
    """One candidate positive set: inputs as `gristmill classifier train --positive` takes them."""

    name: str
    inputs: tuple[str, ...]
    where: str | None = None


class ProxyRunner(Protocol):
    """Runs one short proxy training for a candidate and returns its metric; raises if the run fails."""

    metric: str
    higher_is_better: bool

    def run(self, candidate: SeedCandidate) -> float: ...


@dataclass(frozen=True)
class ProxyOutcome:
    candidate: SeedCandidate
    value: float | None
    error: str | None = None


@dataclass
class SeedSelection:
    """Every candidate's outcome, best first (failed runs last, in the order given), and the winner."""

    metric: str
    higher_is_better: bool
    outcomes: list[ProxyOutcome] = field(default_factory=list)

    @property
    def best(self) -> SeedCandidate | None:
        return self.outcomes[0].candidate if self.outcomes and self.outcomes[0].value is not None else None

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "higher_is_better": self.higher_is_better,
                "best": self.best.name if self.best else None,
                "outcomes": [asdict(outcome) for outcome in self.outcomes]}


def select_seed_set(candidates: list[SeedCandidate], runner: ProxyRunner) -> SeedSelection:
    """Run the proxy for every candidate and rank them; a failed or non-finite run is recorded, never fatal.

    Ties keep the order of `candidates`, so list a cheaper or preferred set first.
    """
    names = [candidate.name for candidate in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must be unique, got {names}")
    outcomes = []
    for candidate in candidates:
        try:
            value = float(runner.run(candidate))
        except Exception:  # noqa: BLE001 - one failed proxy run must not lose the others
            outcomes.append(ProxyOutcome(candidate, None, traceback.format_exc(limit=3)))
            continue
        if math.isfinite(value):
            outcomes.append(ProxyOutcome(candidate, value))
        else:
            outcomes.append(ProxyOutcome(candidate, None, f"{runner.metric} is {value}"))
    sign = -1.0 if runner.higher_is_better else 1.0
    ranked = sorted((outcome for outcome in outcomes if outcome.value is not None), key=lambda outcome: sign * outcome.value)
    failed = [outcome for outcome in outcomes if outcome.value is None]
    return SeedSelection(runner.metric, runner.higher_is_better, ranked + failed)


def text_batches(tables: list[Any], batch_size: int = 1024) -> Iterator[list[str]]:
    """The `text` column of each table, in lists of at most `batch_size` texts."""
    for table in tables:
        texts = table.column("text").to_pylist()
        for start in range(0, len(texts), batch_size):
            yield texts[start:start + batch_size]


@dataclass
class TrainerProxyRunner:
    """Trains the bundled proxy model from scratch on each candidate's documents, with the same tokenizer, token
    budget, seeds and held-out sets, and returns the mean held-out bits per byte (lower is better).

    The candidate's documents are read exactly as `classifier train --positive` reads them (with `where`), so the
    winner's inputs can be passed on unchanged; held-out sets are scored as whole documents. Concat-and-chunk
    batching is the default: seed sets are small and unbucketed; any TrainConfig setting can be overridden through
    `training`.
    """

    tokenizer: str
    heldout: dict[str, tuple[str, ...]]
    tokens: int
    work_dir: Path
    seeds: tuple[int, ...] = (0,)
    training: dict[str, Any] = field(default_factory=dict)
    metric: str = "bits_per_byte"
    higher_is_better: bool = False
    _heldout_directories: dict[str, str] | None = field(default=None, init=False, repr=False)

    def tokenize(self, name: str, inputs: tuple[str, ...], where: str | None) -> tuple[Path, list[dict[str, Any]]]:
        from gristmill.stages.tokens.tokenization import load_tokenizer

        loaded = load_tokenizer(self.tokenizer)
        read = [read_documents(path, where, ["text"], name) for path in inputs]
        directory = self.work_dir / "tokens" / name
        sidecar = write_heldout_documents(text_batches([table for table, _ in read]), loaded, directory / "documents")
        if sidecar["sequences"] == 0:
            raise ValueError(f"{name}: no documents with text in {', '.join(inputs)}")
        return directory, [record for _, record in read]

    def __post_init__(self) -> None:
        # Validated once up front, so a bad setting is one error, not a failed run per candidate.
        try:
            self._protocol = ProxyProtocol(tokens=self.tokens, seeds=list(self.seeds),
                                           training={"batching": "concat", **self.training})
        except ValidationError as error:
            raise ValueError(describe_validation_error(error).removeprefix("(top level): ")
                             .replace("Value error, ", "")) from None

    def run(self, candidate: SeedCandidate) -> float:
        if self._heldout_directories is None:  # tokenized once, shared by every candidate
            self._heldout_directories = {name: str(self.tokenize(f"heldout-{name}", inputs, None)[0])
                                         for name, inputs in self.heldout.items()}
        data, _ = self.tokenize(f"candidate-{candidate.name}", candidate.inputs, candidate.where)
        runs = [ProxyRun(candidate.name, seed, self._protocol.train_config(
                    self.work_dir / "runs" / candidate.name / f"seed-{seed}", seed, self._heldout_directories,
                    None, data=[str(data)]))
                for seed in self._protocol.seeds]
        results = run_all(runs)
        return candidate_scores(results, candidate.name, self._protocol.seeds)["target_bits_per_byte"]["mean"]
