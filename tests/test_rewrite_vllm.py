"""The rewrite stage on vLLM's offline engine, for real: on CPU through vllm-cpu (`make test-vllm`), or on a GPU.

Skipped where vLLM is not installed; the main test environment does not have it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: no spawned copy of pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed; `make test-vllm` runs this file on CPU")

from stages.rewrite import Rewrite, RewriteConfig  # noqa: E402
from stages.rewrite_backends import Request, SamplingSettings  # noqa: E402
from tests.test_rewrite import ENGLISH, batch_of, build_tiny_llama, chat  # noqa: E402

ON_CPU = not __import__("torch").cuda.is_available()


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> Rewrite:
    model = build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")
    stage = Rewrite(RewriteConfig(backend="vllm", model=str(model), max_model_len=1024, enforce_eager=ON_CPU,
                                  dtype="float32" if ON_CPU else "auto", max_new_tokens=8, chunk_tokens=16,
                                  checks=["refusal"]))
    stage.setup()
    return stage


def test_vllm_rewrites_chunks_and_fills_provenance_and_cost(stage: Rewrite, tmp_path: Path) -> None:
    stage.bind(str(tmp_path), "part-00000")
    result = stage.process(batch_of(ENGLISH))
    rows = result.kept.to_pylist()
    assert [row["rewrite_status"] for row in rows] == ["rewritten", "rewritten"]
    assert all(0 < row["rewrite_tokens_out"] and row["rewrite_tokens_in"] > 16 for row in rows)
    assert result.stats["rewrite_chunks"] > 2 and result.stats["rewrite_generations"] == result.stats["rewrite_chunks"]
    assert (result.stats["rewrite_gpu_seconds"] == 0) == ON_CPU
    again = stage.process(batch_of(ENGLISH))
    assert again.stats["rewrite_cache_hits"] == result.stats["rewrite_chunks"]
    assert again.kept.column("text").equals(result.kept.column("text"))


def test_vllm_outputs_follow_their_own_seed_whatever_the_batch(stage: Rewrite) -> None:
    backend = stage.backend
    sampling = SamplingSettings(temperature=0.9, top_p=0.95, max_new_tokens=8, seed=0)
    alone = backend.generate([Request(chat(ENGLISH[0]), seed=7)], sampling)[0]
    together = backend.generate([Request(chat(ENGLISH[1]), seed=8), Request(chat(ENGLISH[0]), seed=7)], sampling)
    reseeded = backend.generate([Request(chat(ENGLISH[0]), seed=9)], sampling)[0]
    assert together[1].text == alone.text and together[1].tokens_out == alone.tokens_out
    assert reseeded.text != alone.text
