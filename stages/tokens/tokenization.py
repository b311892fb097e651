"""Tokenizers for Gristmill: load any local HF tokenizer, encode in parallel batches with EOS, train a BPE.

Everything is local (no hub downloads); a tokenizer's fingerprint travels into every output's
sidecar, so shards made with different vocabularies can never be mixed unnoticed.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gristmill.pipeline.engine.dataset import Dataset

DEFAULT_EOS = "<|endoftext|>"
# Looked up, in order, when neither the caller nor tokenizer_config.json names the end-of-document token.
KNOWN_EOS_TOKENS = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
TRAINING_FILE = "training.json"
# Schema metadata key under which tokenized datasets record their tokenizer.
TOKENIZER_METADATA_KEY = b"gristmill.tokenizer"


class TokenizerError(Exception):
    """A tokenizer cannot be loaded or has no usable EOS token; the message names the path."""


@dataclass(frozen=True)
class LoadedTokenizer:
    """A `tokenizers.Tokenizer` with its EOS id and identity, ready to encode documents."""

    tokenizer: Tokenizer
    path: str
    eos_token: str
    eos_id: int
    vocab_size: int
    fingerprint: str

    def describe(self) -> dict[str, Any]:
        """The record written into schemas and sidecars."""
        return {"path": self.path, "fingerprint": self.fingerprint, "vocab_size": self.vocab_size,
                "eos_token": self.eos_token, "eos_id": self.eos_id}

    def encode(self, texts: list[str]) -> pa.ListArray:
        """Token ids of each text with EOS appended, as an Arrow list<uint32>; batched and multi-threaded."""
        encodings = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        ids = [encoding.ids for encoding in encodings]
        for document in ids:
            document.append(self.eos_id)
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)), out=offsets[1:])
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.uint32, count=int(offsets[-1]))
        if offsets[-1] >= 2**31:
            raise ValueError("a batch of more than 2**31 tokens; encode fewer texts at a time")
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids; special tokens (EOS) are left out."""
        return self.tokenizer.decode([int(token) for token in ids], skip_special_tokens=True)


def tokenizer_record(schema: pa.Schema) -> dict[str, Any] | None:
    """The tokenizer a tokenized dataset was made with, from its schema metadata (None if untokenized)."""
    raw = (schema.metadata or {}).get(TOKENIZER_METADATA_KEY)
    return json.loads(raw) if raw else None


def fingerprint(tokenizer: Tokenizer, eos_id: int) -> str:
    """A stable digest of everything that decides token ids: the canonical serialised tokenizer and EOS."""
    canonical = json.dumps(json.loads(tokenizer.to_str()), sort_keys=True, separators=(",", ":"))
    return "xxh3_128:" + xxhash.xxh3_128_hexdigest(f"{canonical}\x1feos={eos_id}".encode())


def load_tokenizer(path: str | Path, eos_token: str | None = None) -> LoadedTokenizer:
    """Load a `tokenizer.json`, or a local directory holding one (other formats need `transformers`).

    The EOS token is `eos_token`, else the directory's `tokenizer_config.json` `eos_token`,
    else the first of KNOWN_EOS_TOKENS in the vocabulary.
    """
    location = Path(path)
    configured_eos = None
    if location.is_file():
        tokenizer = _read_tokenizer_file(location)
        configured_eos = _configured_eos(location.parent / CONFIG_FILE)
    elif (location / TOKENIZER_FILE).is_file():
        tokenizer = _read_tokenizer_file(location / TOKENIZER_FILE)
        configured_eos = _configured_eos(location / CONFIG_FILE)
    elif location.is_dir():
        tokenizer, configured_eos = _load_with_transformers(location)
    else:
        raise TokenizerError(f"{location}: no such tokenizer file or directory (tokenizers are never downloaded)")
    vocabulary = tokenizer.get_vocab(with_added_tokens=True)
    candidates = [eos_token] if eos_token else [configured_eos] if configured_eos else list(KNOWN_EOS_TOKENS)
    found = next((token for token in candidates if token in vocabulary), None)
    if found is None:
        raise TokenizerError(f"{location}: no EOS token among {', '.join(map(str, candidates))}; name one with eos_token")
    eos_id = vocabulary[found]
    return LoadedTokenizer(tokenizer, str(path), found, eos_id, tokenizer.get_vocab_size(with_added_tokens=True),
                           fingerprint(tokenizer, eos_id))


def _read_tokenizer_file(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # noqa: BLE001 - tokenizers raises plain Exceptions for bad files
        raise TokenizerError(f"{path}: not a tokenizers file ({error})") from None


def _configured_eos(path: Path) -> str | None:
    if not path.is_file():
        return None
    value = json.loads(path.read_text()).get("eos_token")
    return value.get("content") if isinstance(value, dict) else value


def _load_with_transformers(directory: Path) -> tuple[Tokenizer, str | None]:
    """Directories without tokenizer.json (e.g. sentencepiece) convert through transformers' fast tokenizers."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise TokenizerError(f"{directory}: no {TOKENIZER_FILE}; install transformers to load other formats") from None
    try:
        loaded = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, use_fast=True)
    except (OSError, ValueError) as error:
        raise TokenizerError(f"{directory}: transformers cannot load a tokenizer here ({error})") from None
    backend = getattr(loaded, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerError(f"{directory}: transformers has no fast tokenizer for this format")
    return backend, loaded.eos_token


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2,
                         eos_token: str = DEFAULT_EOS) -> Tokenizer:
    """A byte-level BPE (GPT-2 style: any byte sequence encodes, decoding is lossless) trained offline."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, directory: Path, eos_token: str, training: dict[str, Any]) -> LoadedTokenizer:
    """Write tokenizer.json, a tokenizer_config.json that transformers' AutoTokenizer loads, and training.json."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / TOKENIZER_FILE))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos_token, "bos_token": eos_token,
              "unk_token": eos_token, "clean_up_tokenization_spaces": False}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    loaded = load_tokenizer(directory)
    (directory / TRAINING_FILE).write_text(json.dumps(training | {"tokenizer": loaded.describe()}, indent=2) + "\n")
    return loaded


@dataclass
class TextSample:
    """A deterministic sample of a dataset's texts, counted as it is read."""

    dataset: Dataset
    max_bytes: int
    seed: int
    documents: int = 0
    bytes: int = 0

    def __iter__(self) -> Iterator[str]:
        """Texts whose seeded id hash falls under the sampled fraction, in dataset order, up to max_bytes."""
        total = sum(record.text_bytes_out for record in self.dataset.manifest().shards) or 1
        threshold = min(self.max_bytes / total * 1.1, 1.0) * 2**64
        for batch in self.dataset.iter_batches(columns=["id", "text"]):
            for document_id, text in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist()):
                if not text or xxhash.xxh3_64_intdigest(f"{self.seed}\x1f{document_id}".encode()) >= threshold:
                    continue
                self.documents += 1
                self.bytes += len(text.encode())
                yield text
                if self.bytes >= self.max_bytes:
                    return


def train_from_dataset(dataset_path: str | Path, vocab_size: int, output: Path, sample_bytes: int, seed: int,
                       min_frequency: int = 2, eos_token: str = DEFAULT_EOS) -> tuple[LoadedTokenizer, TextSample]:
    """Train a byte-level BPE on a seeded sample of a Gristmill dataset and save it under `output`."""
    dataset = Dataset(dataset_path)
    sample = TextSample(dataset, sample_bytes, seed)
    started = time.perf_counter()
    tokenizer = train_byte_level_bpe(sample, vocab_size, min_frequency, eos_token)
    training = {
        "dataset": str(dataset.path),
        "dataset_config_hash": dataset.manifest().config_hash,
        "seed": seed,
        "sample_documents": sample.documents,
        "sample_bytes": sample.bytes,
        "vocab_size": vocab_size,
        "min_frequency": min_frequency,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return save_tokenizer(tokenizer, output, eos_token, training), sample
