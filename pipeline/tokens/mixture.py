"""Mixtures: token budgets (or weights) over sources, quality tiers, quality levels and buckets, compiled into a plan.

The plan is the trainer's whole view of the data: which sequence of which exported bucket comes
next, decided once, seeded, with exact token counts and every repetition cap checked beforehand.
A component may also be balanced over the groups of an integer column (k-means clusters, ClusterClip).

Plan format (written by `write_plan`): `plan.json`, a header with the seed, the exported files
(path relative to the plan, checksum, tokenizer) and per component its selection, budget,
tokens, sequences and epochs; and `plan.npy`, an int64 array of shape (N, 3) whose rows are
(component, file, sequence) in training order. `sequence` indexes the file's training sequences
(Megatron documents), so the trainer reads `IndexedDataset(file).document(sequence)`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gristmill.pipeline.engine.config_files import validated_yaml


PLAN_FORMAT = "gristmill.mixture_plan"
PLAN_HEADER = "plan.json"
PLAN_ARRAY = "plan.npy"


class MixtureError(Exception):
    """A mixture cannot be compiled; the message is one line naming the file or component."""


class QualityTier(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str = Field(description="Per-sequence column holding a quality score (copied by decompose's keep_columns).")
    min: float | None = Field(None, description="Keep sequences scoring at least this.")
    max: float | None = Field(None, description="Keep sequences scoring below this.")


LEVEL_COMPARISON = re.compile(r"^\s*(>=|<=|==|>|<)\s*(-?\d+)\s*$")


class QualityLevels(BaseModel):
    """Integer quality levels to take (the `quality_bucket` stage's column), both ends included."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str = Field("quality_bucket", description="Per-sequence integer column (a decompose keep_column).")
    min: int | None = Field(None, description="Lowest level taken.")
    max: int | None = Field(None, description="Highest level taken.")

    @model_validator(mode="before")
    @classmethod
    def from_comparison(cls, value: Any) -> Any:
        """Accept one comparison with an integer: `>= 15`, `> 14`, `<= 4`, `< 5` or `== 7`."""
        if not isinstance(value, str):
            return value
        match = LEVEL_COMPARISON.match(value)
        if match is None:
            raise ValueError(f"expected a comparison such as '>= 15', got {value!r}")
        operator, level = match.group(1), int(match.group(2))
        return {">=": {"min": level}, ">": {"min": level + 1}, "<=": {"max": level}, "<": {"max": level - 1},
                "==": {"min": level, "max": level}}[operator]

    @model_validator(mode="after")
    def a_range(self) -> QualityLevels:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class ClusterBalance(BaseModel):
    """Flatten a component's tokens over the groups of an integer column, with a per-sequence repetition clip.

    ClusterClip (Shao et al. 2024): common clusters are under-sampled and rare ones repeated, but never past the clip.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str = Field("semantic_cluster", description="Per-sequence integer group id (a decompose keep_column); "
                                                         "null ids form one group of their own.")
    power: float = Field(0.0, ge=0, le=1, description="A group of n tokens gets mass ∝ n ** power: 1 keeps the "
                                                       "natural proportions, 0 is uniform over groups.")
    max_repeats: int = Field(1, ge=1, description="No training sequence is planned more than this many times.")


class Component(BaseModel):
    """One slice of the data and how many of its tokens to train on."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: list[str] | None = Field(None, description="Sources to take; default: every source.")
    buckets: list[int] | None = Field(None, description="Buckets (k of D_k) to take; default: every bucket.")
    quality: QualityTier | None = Field(None, description="A score range on a per-sequence column.")
    quality_bucket: QualityLevels | None = Field(
        None, description="Quality levels on an integer per-sequence column: '>= 15' or {column, min, max}.")
    tokens: int | None = Field(None, gt=0, description="Token budget.")
    weight: float | None = Field(None, gt=0, description="Share of total_tokens left after explicit budgets.")
    max_epochs: float = Field(1.0, gt=0, description="Repetition cap: budget ≤ available tokens × max_epochs.")
    balance: ClusterBalance | None = Field(
        None, description="Sample per group of a column (ClusterClip): {column, power, max_repeats}.")

    @model_validator(mode="before")
    @classmethod
    def source_may_be_one_name(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("source"), str):
            values = values | {"source": [values["source"]]}
        return values

    @model_validator(mode="after")
    def one_amount(self) -> Component:
        if (self.tokens is None) == (self.weight is None):
            raise ValueError("give exactly one of tokens or weight")
        if self.balance is not None and "max_epochs" in self.model_fields_set:
            raise ValueError("max_epochs does not apply with balance: balance.max_repeats is the repetition cap")
        return self

    @property
    def repetition_cap(self) -> float:
        """Most epochs this component may plan: balance.max_repeats when balanced, else max_epochs."""
        return self.balance.max_repeats if self.balance is not None else self.max_epochs


class Mixture(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: int = Field(0, ge=0, description="Seed of every sampling decision.")
    data: list[str] = Field(min_length=1, description="Export directories (relative paths: to the YAML file).")
    total_tokens: int | None = Field(None, gt=0, description="Tokens in all; required when a component has a weight.")
    components: dict[str, Component] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def data_may_be_one_path(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("data"), str):
            values = values | {"data": [values["data"]]}
        return values


def load_mixture(path: str | Path) -> tuple[Mixture, Path]:
    """Read and validate a mixture YAML; returns it and the directory its relative paths start from."""
    path = Path(path)
    return validated_yaml(path, Mixture, MixtureError), path.parent


@dataclass
class Pool:
    """Every training sequence of the exported buckets, with what components select by."""

    files: list[dict[str, Any]]  # sidecar of each exported bucket, plus its absolute prefix
    file: np.ndarray
    sequence: np.ndarray
    tokens: np.ndarray
    bucket: np.ndarray
    columns: dict[str, np.ndarray]


def needed_columns(mixture: Mixture) -> dict[str, str]:
    """Each per-sequence column the mixture selects or balances by, with the first field naming it (for errors)."""
    needed: dict[str, str] = {}
    for name, component in mixture.components.items():
        field = f"components.{name}"
        if component.source:
            needed.setdefault("source", f"{field}.source")
        if component.quality:
            needed.setdefault(component.quality.column, f"{field}.quality.column")
        if component.quality_bucket:
            needed.setdefault(component.quality_bucket.column, f"{field}.quality_bucket.column")
        if component.balance:
            needed.setdefault(component.balance.column, f"{field}.balance.column")
    return needed


def load_pool(mixture: Mixture, base: Path, needed_columns: set[str] | dict[str, str]) -> Pool:
    """Read the per-sequence tables of every exported bucket named by the mixture.

    `needed_columns` may map each column to the mixture field that names it, so a missing one is reported by field.
    """
    fields = needed_columns if isinstance(needed_columns, dict) else {}
    needed_columns = set(needed_columns)
    files, parts = [], []
    fingerprints = set()
    for directory in mixture.data:
        root = (base / directory).resolve()
        sidecars = sorted(root.glob("bucket-*.json")) if root.is_dir() else []
        if not sidecars:
            raise MixtureError(f"{root}: no exported buckets (run gristmill export first)")
        for sidecar_path in sidecars:
            sidecar = json.loads(sidecar_path.read_text())
            fingerprints.add(sidecar["tokenizer"]["fingerprint"])
            table_path = root / f"{sidecar['prefix']}.sequences.parquet"
            schema = pq.read_schema(table_path)
            missing = needed_columns - set(schema.names)
            if missing:
                named = [f"{column} ({fields[column]})" if column in fields else column for column in sorted(missing)]
                raise MixtureError(f"{table_path}: no column {', '.join(named)} to select by "
                                   "(keep it through decompose with keep_columns)")
            table = pq.read_table(table_path, columns=["num_tokens", *sorted(needed_columns)])
            index = len(files)
            files.append(sidecar | {"path": str(root / sidecar["prefix"])})
            parts.append((index, sidecar["bucket"], table))
    if len(fingerprints) > 1:
        raise MixtureError(f"exports were made with {len(fingerprints)} different tokenizers; a mixture needs one")
    columns = {
        name: np.concatenate([table.column(name).to_numpy(zero_copy_only=False) for _, _, table in parts])
        for name in needed_columns
    }
    return Pool(
        files=files,
        file=np.concatenate([np.full(table.num_rows, index) for index, _, table in parts]),
        sequence=np.concatenate([np.arange(table.num_rows) for _, _, table in parts]),
        tokens=np.concatenate([pc.cast(table.column("num_tokens"), "int64").to_numpy() for _, _, table in parts]),
        bucket=np.concatenate([np.full(table.num_rows, bucket) for _, bucket, table in parts]),
        columns=columns,
    )


def selection_mask(component: Component, pool: Pool) -> np.ndarray:
    mask = np.ones(len(pool.tokens), dtype=bool)
    if component.source is not None:
        mask &= np.isin(pool.columns["source"], component.source)
    if component.buckets is not None:
        mask &= np.isin(pool.bucket, component.buckets)
    if component.quality is not None:
        scores = pool.columns[component.quality.column].astype(float)
        if component.quality.min is not None:
            mask &= scores >= component.quality.min
        if component.quality.max is not None:
            mask &= scores < component.quality.max
    if component.quality_bucket is not None:
        levels = pool.columns[component.quality_bucket.column].astype(float)  # a null level is NaN: never taken
        if component.quality_bucket.min is not None:
            mask &= levels >= component.quality_bucket.min
        if component.quality_bucket.max is not None:
            mask &= levels <= component.quality_bucket.max
    return mask


def budgets(mixture: Mixture) -> dict[str, int]:
    """Each component's token budget: explicit, or its weight's share of what total_tokens leaves."""
    explicit = {name: component.tokens for name, component in mixture.components.items() if component.tokens}
    weights = {name: component.weight for name, component in mixture.components.items() if component.weight}
    if not weights:
        return explicit
    if mixture.total_tokens is None:
        raise MixtureError("total_tokens is required when a component has a weight")
    left = mixture.total_tokens - sum(explicit.values())
    if left <= 0:
        raise MixtureError(f"explicit budgets ({sum(explicit.values()):,}) leave nothing of total_tokens for weights")
    total_weight = sum(weights.values())
    return explicit | {name: int(left * weight / total_weight) for name, weight in weights.items()}


def sample_component(rng: np.random.Generator, tokens: np.ndarray, budget: int) -> np.ndarray:
    """Positions into `tokens` adding up to at most `budget`: whole shuffled epochs, then a shuffled prefix.

    Every sequence is used floor(epochs) or that plus one times, so the cap holds per sequence too.
    """
    available = int(tokens.sum())
    whole_epochs, rest = divmod(budget, available)
    chosen = [rng.permutation(len(tokens)) for _ in range(whole_epochs)]
    partial = rng.permutation(len(tokens))
    taken = int(np.searchsorted(np.cumsum(tokens[partial]), rest, side="right"))
    chosen.append(partial[:taken])
    return np.concatenate(chosen)


NULL_GROUP = np.inf  # sorts after every integer id, so the null group is the table's last row


def group_ids(values: np.ndarray, field: str) -> np.ndarray:
    """Float group keys of a balance column (nulls, read as NaN, become NULL_GROUP); refuses non-integer columns."""
    if values.dtype.kind not in "iuf":
        raise MixtureError(f"{field}: the column holds {values.dtype} values, not integer group ids")
    keys = values.astype(float)
    known = ~np.isnan(keys)
    if not np.array_equal(keys[known], np.floor(keys[known])):
        raise MixtureError(f"{field}: the column holds fractional values, not integer group ids")
    keys[~known] = NULL_GROUP
    return keys


def balance_targets(available: np.ndarray, budget: int, power: float, max_repeats: int) -> np.ndarray:
    """Tokens to plan per group: mass ∝ available ** power, water-filled under each cap max_repeats × available.

    A group whose share passes its cap is held at the cap and the excess goes to the others in proportion to their
    weights; that repeats until no share passes its cap (each round caps at least one more group, so ≤ groups rounds).
    """
    weights = available.astype(float) ** power
    caps = (available * max_repeats).astype(float)
    capped = np.zeros(len(available), dtype=bool)
    while not capped.all():
        share = (budget - caps[capped].sum()) / weights[~capped].sum()
        targets = np.where(capped, caps, share * weights)
        over = ~capped & (targets > caps)
        if not over.any():
            return targets
        capped |= over
    return caps


def sample_balanced(rng: np.random.Generator, tokens: np.ndarray, groups: np.ndarray, budget: int,
                    balance: ClusterBalance) -> tuple[np.ndarray, dict[str, Any]]:
    """Positions into `tokens` adding up to at most `budget`, spread over `groups` as `balance` asks; and its record.

    Each group is sampled as a small component (whole epochs, then a prefix) of its water-filled target, rounded
    down to whole sequences; the rounding carries to the next group, groups in order of headroom under their cap,
    so the total is within one sequence of the budget and no sequence is taken more than max_repeats times.
    """
    keys, group_of = np.unique(groups, return_inverse=True)
    available = np.bincount(group_of, weights=tokens, minlength=len(keys)).astype(np.int64)
    caps = available * balance.max_repeats
    weights = available.astype(float) ** balance.power
    wanted = budget * weights / weights.sum()  # the flattened shares before the clip
    targets = balance_targets(available, budget, balance.power, balance.max_repeats)
    order = np.lexsort((np.arange(len(keys)), caps - targets))
    cumulative = np.minimum(np.floor(np.cumsum(targets[order])).astype(np.int64), budget)
    cumulative[-1] = budget
    members = np.argsort(group_of, kind="stable")
    ends = np.cumsum(np.bincount(group_of, minlength=len(keys)))
    starts = ends - np.bincount(group_of, minlength=len(keys))
    planned, picked, done = np.zeros(len(keys), dtype=np.int64), [], 0
    for group, total in zip(order.tolist(), cumulative.tolist()):
        rows = members[starts[group]:ends[group]]
        chosen = rows[sample_component(rng, tokens[rows], min(total - done, int(caps[group])))]
        planned[group] = int(tokens[chosen].sum())
        done += int(planned[group])
        picked.append(chosen)
    record = {
        "column": balance.column, "power": balance.power, "max_repeats": balance.max_repeats,
        "groups": len(keys), "clipped_groups": int(np.sum(targets >= caps)),  # held at the cap
        "clipped_tokens": int(np.round(np.maximum(wanted - caps, 0).sum())),  # flattened shares moved past the caps
        "table": {
            "group": [None if key == NULL_GROUP else int(key) for key in keys.tolist()],
            "available_tokens": available.tolist(),
            "wanted_tokens": np.round(wanted).astype(np.int64).tolist(),
            "planned_tokens": planned.tolist(),
        },
    }
    return np.concatenate(picked), record


def compile_plan(mixture: Mixture, base: Path, source_name: str = "mixture") -> tuple[dict[str, Any], np.ndarray]:
    """The plan header and its (component, file, sequence) array; raises MixtureError on any unmeetable budget."""
    pool = load_pool(mixture, base, needed_columns(mixture))
    amounts = budgets(mixture)
    masks = {name: selection_mask(component, pool) for name, component in mixture.components.items()}
    names = list(mixture.components)
    for position, first in enumerate(names):
        for second in names[position + 1:]:
            shared = int(np.sum(masks[first] & masks[second]))
            if shared:
                raise MixtureError(f"components {first!r} and {second!r} both select {shared:,} sequences; "
                                   "make their selections disjoint")
    header_components, rows = [], []
    for index, name in enumerate(names):
        component = mixture.components[name]
        selected = np.flatnonzero(masks[name])
        available = int(pool.tokens[selected].sum())
        budget = amounts[name]
        allowed = int(available * component.repetition_cap)
        if budget > allowed:
            cap = (f"{component.balance.max_repeats} repeats (balance.max_repeats)" if component.balance
                   else f"{component.max_epochs:g} epochs")
            raise MixtureError(f"component {name!r}: budget {budget:,} tokens exceeds {available:,} available × "
                               f"{cap} = {allowed:,} (short by {budget - allowed:,})")
        rng = np.random.default_rng([mixture.seed, xxhash.xxh3_64_intdigest(name.encode())])
        balanced = {}
        if component.balance is None:
            picked = selected[sample_component(rng, pool.tokens[selected], budget)]
        else:
            groups = group_ids(pool.columns[component.balance.column][selected], f"components.{name}.balance.column")
            positions, balanced["balance"] = sample_balanced(rng, pool.tokens[selected], groups, budget,
                                                             component.balance)
            picked = selected[positions]
        planned = int(pool.tokens[picked].sum())
        header_components.append({
            "name": name, "index": index,
            "selection": component.model_dump(exclude={"tokens", "weight", "max_epochs", "balance"}, exclude_none=True),
            "budget": budget, "tokens": planned, "sequences": len(picked), "available_tokens": available,
            "epochs": round(planned / available, 6), "max_epochs": component.repetition_cap,
        } | balanced)
        rows.append(np.stack([np.full(len(picked), index), pool.file[picked], pool.sequence[picked]], axis=1))
    plan = np.concatenate(rows).astype(np.int64)
    plan = plan[np.random.default_rng([mixture.seed, len(names)]).permutation(len(plan))]
    header = {
        "format": PLAN_FORMAT, "version": 1, "mixture": source_name, "seed": mixture.seed,
        "tokens": int(sum(item["tokens"] for item in header_components)), "sequences": len(plan),
        "columns": ["component", "file", "sequence"], "array": PLAN_ARRAY,
        "tokenizer": pool.files[0]["tokenizer"],
        "files": [{"path": file["path"], "bucket": file["bucket"], "capacity": file["capacity"],
                   "checksum": file["checksums"]["bin"]} for file in pool.files],
        "components": header_components,
    }
    return header, plan


def write_plan(header: dict[str, Any], plan: np.ndarray, output: str | Path) -> Path:
    """Write plan.npy and plan.json (file paths made relative to the plan directory)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    files = [file | {"path": os.path.relpath(file["path"], output.resolve())} for file in header["files"]]
    np.save(output / PLAN_ARRAY, plan)
    (output / PLAN_HEADER).write_text(json.dumps(header | {"files": files}, indent=2) + "\n")
    return output / PLAN_HEADER
