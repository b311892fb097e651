"""Choose a quality classifier's positive seed set by short proxy training runs (the Ultra-FineWeb recipe).

A seed set is judged by what training on it does to a small model, not by how it reads. `ProxyRunner` is the
interface; `TrainerProxyRunner` implements it with the bundled trainer (`gristmill classifier select-seeds`).
"""

from __future__ import annotations

import json
import math
import statistics
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gristmill.classifiers.documents import read_documents


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


def write_token_documents(tables: list[Any], tokenizer: Any, prefix: Path, batch_size: int = 1024) -> dict[str, Any]:
    """Tokenizes the `text` of each table into one indexed dataset (a document per text, EOS-terminated) with a
    sidecar naming the tokenizer, so the trainer reads it like an export and can score bits per byte on it."""
    from gristmill.pipeline.tokens.indexed_dataset import IndexedDatasetWriter, token_dtype

    prefix.parent.mkdir(parents=True, exist_ok=True)
    writer = IndexedDatasetWriter(prefix, token_dtype(tokenizer.vocab_size))
    for table in tables:
        texts = table.column("text").to_pylist()
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer.encode(texts[start:start + batch_size])
            lengths = np.diff(encoded.offsets.to_numpy())
            writer.add_batch(encoded.values.to_numpy(), lengths, np.ones(len(lengths), np.int64))
    written = writer.finish()
    sidecar = {"prefix": prefix.name, "mode": "documents", "tokens": written.tokens, "sequences": written.documents,
               "tokenizer": tokenizer.describe(), "checksums": {"bin": written.bin_checksum, "idx": written.idx_checksum}}
    Path(f"{prefix}.json").write_text(json.dumps(sidecar, indent=2))
    return sidecar


@dataclass
class TrainerProxyRunner:
    """Trains the bundled proxy model from scratch on each candidate's documents, with the same tokenizer, token
    budget, seeds and held-out sets, and returns the mean held-out bits per byte (lower is better).

    The candidate's documents are read exactly as `classifier train --positive` reads them (with `where`), so the
    winner's inputs can be passed on unchanged. Concat-and-chunk batching is the default: seed sets are small
    and unbucketed; any TrainConfig setting can be overridden through `training`.
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
        sidecar = write_token_documents([table for table, _ in read], loaded, directory / "documents")
        if sidecar["sequences"] == 0:
            raise ValueError(f"{name}: no documents with text in {', '.join(inputs)}")
        return directory, [record for _, record in read]

    def __post_init__(self) -> None:
        from gristmill.trainer.config import TrainConfig

        # Validated once up front, so a bad setting is one error, not a failed run per candidate.
        self._settings = TrainConfig(**{"batching": "concat", **self.training}, data=["-"], steps=1,
                                     output="-").model_dump(exclude={"data", "steps", "output"})
        if self.tokens < self._settings["tokens_per_step"]:
            raise ValueError(f"--tokens {self.tokens} is less than one step of {self._settings['tokens_per_step']} tokens")

    def run(self, candidate: SeedCandidate) -> float:
        from gristmill.trainer.config import TrainConfig
        from gristmill.trainer.train import train

        if self._heldout_directories is None:  # tokenized once, shared by every candidate
            self._heldout_directories = {name: str(self.tokenize(f"heldout-{name}", inputs, None)[0])
                                         for name, inputs in self.heldout.items()}
        data, _ = self.tokenize(f"candidate-{candidate.name}", candidate.inputs, candidate.where)
        per_seed = []
        for seed in self.seeds:
            settings = self._settings | {"heldout": self._heldout_directories, "seed": seed}
            metrics = train(TrainConfig(**settings, data=[str(data)], steps=self.tokens // settings["tokens_per_step"],
                                        output=str(self.work_dir / "runs" / candidate.name / f"seed-{seed}")))
            per_seed.append(statistics.fmean(metrics["final_bits_per_byte"].values()))
        return statistics.fmean(per_seed)
