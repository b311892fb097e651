"""Choose a quality classifier's positive seed set by short proxy training runs (the Ultra-FineWeb recipe).

A seed set is judged by what training on it does to a small model, not by how it reads; the trainer plugs in through `ProxyRunner`.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class SeedCandidate:
    """One candidate positive set: inputs as `gristmill classifier train --positive` takes them."""

    name: str
    inputs: tuple[str, ...]
    where: str | None = None


class ProxyRunner(Protocol):
    """Runs one short proxy training for a candidate and returns its metric; raises if the run fails.

    The intended implementation, once `gristmill proxy` exists, anneals one fixed small checkpoint for
    a fixed token budget on the base mixture plus the candidate's documents and returns held-out bits
    per byte (`higher_is_better = False`); the winner's inputs become `classifier train --positive`.
    """

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
