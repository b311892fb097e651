"""What the LLM stages (`rewrite`, `annotate`) share: the config of a generating backend, a stage base that loads the
model lazily and names it by its fingerprint, an append-only cache of generations that survives a kill, and cost stats.

Written once here, so a second stage that asks a model something gets resume, batching and cost accounting for free.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from typing import Any, ClassVar

import xxhash
from gristmill.pipeline.engine.files import Location, is_remote, write_json_atomic
from gristmill.pipeline.engine.stage import (
    MapStage,
    Resources,
    StageConfig,
    tagged_options,
)
from gristmill.stages.rewrite.backends import (
    Backend,
    BackendOptions,
    Request,
    SamplingSettings,
    TransformersOptions,
    model_fingerprint,
    require,
    timed_generate,
)
from pydantic import Field, model_validator


class GenerationConfig(StageConfig):
    """The options every LLM stage has: the backend (a tagged union by `kind`), the model, sampling, batching and price."""

    backend: BackendOptions = Field(
        TransformersOptions(),
        description="Where text is generated, with that backend's own options: {kind: transformers} (small models, "
        "CPU or GPU), {kind: vllm} (offline engine) or {kind: openai, base_url: ...} (HTTP server); see docs/REWRITE.md.",
    )
    model: str = Field(description="Model folder (transformers, vllm), or the model name a server serves (openai).")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(512, ge=1, description="Most tokens generated per request.")
    seed: int = Field(0, description="Base seed; each request's seed derives from it and the document id.")
    batch_size: int = Field(256, ge=1, description="Requests per generate call; results reach the cache after each call.")
    max_model_len: int | None = Field(None, ge=64, description="Context length; default: the model's (openai: 4096).")
    price_per_gpu_hour: float = Field(2.0, ge=0, description="Price of one GPU-hour, for cost in the stats.")

    @model_validator(mode="before")
    @classmethod
    def options_inside_backend(cls, data: Any) -> Any:
        return tagged_options(cls, "backend", data)


class GenerationCache:
    """Append-only JSONL of finished generations, one file per shard; a line torn by a kill is ignored.

    An object store cannot append: there each call's generations go into a new object beside the others
    (`<shard>-000001.jsonl`, ...), uploaded whole, and all of them are read back."""

    def __init__(self, path: Location):
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        self.torn = False  # the file ends in a line a kill cut short: the next append starts a new line first
        self.parts: list[Location] = []
        if is_remote(path):
            self.parts = sorted(path.parent.glob(f"{path.stem}-*.jsonl"), key=str) if path.parent.exists() else []
            for part in self.parts:
                self._read(part.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True))
        elif path.exists():
            with open(path, encoding="utf-8", errors="replace") as handle:  # a kill may cut a character in two
                self._read(handle)

    def _read(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.torn = not line.endswith("\n")
            try:
                entry = json.loads(line)
                self.entries[entry["key"]] = entry
            except (json.JSONDecodeError, KeyError, TypeError):
                continue

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def add(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            return
        lines = "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries)
        if is_remote(self.path):
            part = self.path.with_name(f"{self.path.stem}-{len(self.parts) + 1:06d}.jsonl")
            write_json_atomic(part, lines)
            self.parts.append(part)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write("\n" * self.torn + lines)
                handle.flush()
                os.fsync(handle.fileno())
        self.torn = False
        for entry in entries:
            self.entries[entry["key"]] = entry


def generation_key(*parts: Any) -> str:
    """A cache key over everything that decides a generation (document, text hash, prompt, model, sampling)."""
    return xxhash.xxh3_128_hexdigest(json.dumps(parts).encode())


def request_seed(seed: int, doc_id: str, index: int = 0) -> int:
    """Each request's own seed, so its output does not depend on which requests share its batch."""
    return xxhash.xxh64_intdigest(f"{seed}\0{doc_id}\0{index}".encode()) & 0x7FFFFFFF


def generate_entries(backend: Backend, keyed_requests: list[tuple[str, Request]], sampling: SamplingSettings,
                     batch_size: int, cache: GenerationCache | None) -> list[dict[str, Any]]:
    """One entry per request, in order, from generate calls of `batch_size` requests; each call's successes are
    appended to the cache before the next call starts. A call's seconds are shared out by each request's tokens."""
    entries: list[dict[str, Any]] = []
    for start in range(0, len(keyed_requests), batch_size):
        group = keyed_requests[start:start + batch_size]
        generations, seconds = timed_generate(backend, [request for _, request in group], sampling)
        weights = [generation.tokens_in + generation.tokens_out for generation in generations]
        total = sum(weights)
        made = []
        for (key, _), generation, weight in zip(group, generations, weights):
            share = seconds * weight / total if total else seconds / len(group)
            made.append({
                "key": key, "text": generation.text, "tokens_in": generation.tokens_in,
                "tokens_out": generation.tokens_out, "finish_reason": generation.finish_reason,
                "seconds": share, "gpu_seconds": share * backend.gpus, "error": generation.error,
            })
        if cache is not None:
            cache.add([entry for entry in made if entry["error"] is None])  # errors are never cached
        entries.extend(entry | {"cache_hit": False} for entry in made)
    return entries


def cost_stats(prefix: str, tokens_in: int, tokens_out: int, seconds: float, gpu_seconds: float,
               price_per_gpu_hour: float) -> dict[str, float]:
    """The counters a stage sums per shard: tokens, generation seconds, GPU-seconds and cost in USD."""
    return {
        f"{prefix}_tokens_in": tokens_in, f"{prefix}_tokens_out": tokens_out,
        f"{prefix}_generation_seconds": seconds, f"{prefix}_gpu_seconds": gpu_seconds,
        f"{prefix}_cost_usd": gpu_seconds / 3600 * price_per_gpu_hour,
    }


def cost_summary(stats: dict[str, float], prefix: str = "rewrite") -> dict[str, float | None]:
    """Rates from a stage's summed counters: tokens/s, GPU-seconds and cost per million generated tokens."""
    seconds = stats.get(f"{prefix}_generation_seconds", 0.0)
    tokens_in, tokens_out = stats.get(f"{prefix}_tokens_in", 0), stats.get(f"{prefix}_tokens_out", 0)
    cost = stats.get(f"{prefix}_cost_usd", 0.0)
    return {
        "tokens_out_per_second": tokens_out / seconds if seconds else None,
        "tokens_per_second": (tokens_in + tokens_out) / seconds if seconds else None,
        "gpu_seconds": stats.get(f"{prefix}_gpu_seconds", 0.0),
        "cost_usd": cost,
        "cost_per_million_tokens_out": cost / tokens_out * 1e6 if tokens_out else None,
    }


class GeneratingStage(MapStage):
    """A map stage that asks an LLM: GPUs by backend, the model loaded on the first batch (never while planning),
    named in cache keys by its fingerprint, and a generation cache per shard in `_work/<cache_dir>/`."""

    cache_dir: ClassVar[str]
    resources = Resources(cpus=1, memory_gb=4)

    @classmethod
    def resources_for(cls, config: GenerationConfig) -> Resources:
        """vLLM needs its GPUs on the worker (Dask routes the task to a worker started with `--resources GPU=N`);
        transformers on an explicit CUDA device needs one; the server backend and CPU need none."""
        return cls.resources.model_copy(update={"gpus": config.backend.worker_gpus()})

    def setup(self) -> None:
        """Cheap checks only: the model loads on the first batch, so the planning process never loads it."""
        require(self.config.backend.library, "see docs/REWRITE.md for the backends' installs")
        self._backend: Backend | None = None
        self.cache: GenerationCache | None = None
        config = self.config
        self.sampling = SamplingSettings(config.temperature, config.top_p, config.max_new_tokens, config.seed)
        self.params_json = json.dumps(self.sampling.__dict__, sort_keys=True)
        self.model_name = config.model + self.weights_file_suffix

    @property
    def weights_file_suffix(self) -> str:
        """`::FILE` when the backend loads one GGUF file from the model folder, so two files of one folder differ."""
        gguf_file = getattr(self.config.backend, "gguf_file", None)
        return f"::{gguf_file}" if gguf_file else ""

    @functools.cached_property
    def model_identity(self) -> str:
        """The model's fingerprint (with the GGUF file loaded from it): the cache key's model, unlike its path,
        which moves with the folder and is kept only as provenance. Computed on first use, never while planning."""
        return model_fingerprint(self.config.model) + self.weights_file_suffix

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = self.config.backend.build(self.config.model, self.config.max_model_len, self.config.seed)
        return self._backend

    def open_shard(self, shard_name: str, work_dir: Location) -> None:
        """A shard starts: its generations are kept in `_work/<cache_dir>/<shard>.jsonl`."""
        super().open_shard(shard_name, work_dir)
        self.cache = GenerationCache(work_dir / self.cache_dir / f"{shard_name}.jsonl")

    def cached(self, key: str) -> dict[str, Any] | None:
        """The shard cache's entry for `key`, marked as a hit; None when it was never generated."""
        entry = self.cache.get(key) if self.cache is not None else None
        return None if entry is None else entry | {"cache_hit": True}
