"""Train, load and apply fastText classifiers, with fastText's numpy-2 and NaN pitfalls handled in one place.

Prediction reproduces fastText's own arithmetic in numpy over per-row logits computed once at load,
which gives the same probabilities several times faster than fastText's predict on long documents.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fasttext
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from gristmill.stages.quality.preprocess import LABEL_PREFIX, fasttext_lines

END_OF_LINE = "</s>"  # fastText appends this word to every line it reads
FNV_OFFSET = 2166136261
FNV_PRIME = 16777619
NGRAM_MULTIPLIER = 116049371
PREDICT_CHUNK_ROWS = 2048  # bounds the per-token arrays of one prediction call
SIGMOID_TABLE_SIZE, MAX_SIGMOID = 512, 8.0
MODEL_FILE = "model.bin"
CARD_FILE = "model_card.json"


class TrainingParameters(BaseModel):
    """fastText supervised-training options, under their fastText names where they have one."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    epoch: int = Field(5, ge=1, description="Passes over the training data.")
    lr: float = Field(0.1, gt=0, description="Learning rate.")
    word_ngrams: int = Field(2, ge=1, le=5, description="Longest word n-gram used as a feature (wordNgrams).")
    dim: int = Field(64, ge=1, description="Size of the hidden layer (dim).")
    min_count: int = Field(1, ge=1, description="Ignore words seen fewer times (minCount).")
    bucket: int = Field(1_000_000, ge=0, description="Hash buckets for word n-grams; the model holds bucket x dim floats.")
    threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, description="Training threads.")
    # fastText's minstd_rand treats seeds 0 and 1 alike, so seeds start at 1 and every retry differs.
    seed: int = Field(1, ge=1, description="Seed of the first training attempt; retries use the following seeds.")
    autotune_seconds: int | None = Field(
        None, ge=1, description="Let fastText search hyperparameters on the held-out split for this long."
    )
    attempts: int = Field(3, ge=1, description="Trainings to try when fastText reports `Encountered NaN`; each retry uses the next seed.")


@dataclass
class TrainingRun:
    """A trained fastText model and how it came to be."""

    model: Any
    seed: int
    failed_seeds: list[int] = field(default_factory=list)
    arguments: dict[str, Any] = field(default_factory=dict)


def train_fasttext(
    tokens: pa.ListArray, labels: list[str], parameters: TrainingParameters,
    validation: tuple[pa.ListArray, list[str]] | None = None,
) -> TrainingRun:
    """Train a supervised model on tokenised documents; retries with the next seed on fastText's NaN error.

    Autotuning needs `validation` (tokens and labels of held-out documents).
    """
    if parameters.autotune_seconds is not None and validation is None:
        raise ValueError("autotune needs validation data")
    with tempfile.TemporaryDirectory(prefix="gristmill-fasttext-") as scratch:
        train_path = Path(scratch) / "train.txt"
        write_lines(train_path, fasttext_lines(tokens, labels))
        options: dict[str, Any] = dict(
            epoch=parameters.epoch, lr=parameters.lr, wordNgrams=parameters.word_ngrams, dim=parameters.dim,
            minCount=parameters.min_count, bucket=parameters.bucket, thread=parameters.threads, verbose=0,
        )
        if parameters.autotune_seconds is not None:
            validation_path = Path(scratch) / "validation.txt"
            write_lines(validation_path, fasttext_lines(*validation))
            options |= dict(autotuneValidationFile=str(validation_path), autotuneDuration=parameters.autotune_seconds)
        failed: list[int] = []
        for seed in range(parameters.seed, parameters.seed + parameters.attempts):
            try:
                model = fasttext.train_supervised(str(train_path), seed=seed, **options)
            except RuntimeError as error:
                if "Encountered NaN" not in str(error):
                    raise
                failed.append(seed)
                continue
            return TrainingRun(model, seed, failed, fasttext_arguments(model))
    raise RuntimeError(f"fastText training hit 'Encountered NaN' with every seed tried: {failed}")


def write_lines(path: Path, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)


def fasttext_arguments(model: Any) -> dict[str, Any]:
    """The arguments a model was trained with (after autotuning), for the model card."""
    args = model.f.getArgs()
    names = ("epoch", "lr", "wordNgrams", "dim", "minCount", "bucket", "minn", "maxn", "neg", "ws", "thread", "seed")
    return {name: getattr(args, name) for name in names} | {"loss": args.loss.name}


def model_file(path: str | Path) -> Path:
    """The fastText file of a classifier directory (what `gristmill classifier train` writes) or a model file."""
    path = Path(path)
    found = path / MODEL_FILE if path.is_dir() else path
    if not found.is_file():
        raise ValueError(f"{path}: neither a fastText model file nor a classifier directory holding {MODEL_FILE}")
    return found


def model_card(path: str | Path) -> dict[str, Any] | None:
    """The model card of a classifier directory; None for a bare model file."""
    card = Path(path) / CARD_FILE
    return json.loads(card.read_text()) if card.is_file() else None


def load_fasttext(path: str | Path) -> Any:
    """Load a model file or classifier directory (fastText.load_model would also print a warning per worker)."""
    return fasttext.FastText._FastText(model_path=str(model_file(path)))


class FastTextClassifier:
    """Label probabilities for documents tokenised by `preprocess.tokenize`.

    Softmax and one-vs-all models without subwords (what `train_fasttext` makes, and most published
    quality classifiers) are scored in numpy: fastText averages the input rows of a document's words
    and n-grams and multiplies by the output matrix, so the product of each input row with the output
    matrix is computed once and a document's logits are the mean of its rows' products. Other models
    (quantized, subword, hierarchical softmax) go through fastText's own predict, line by line, which
    returns correct probabilities under numpy 2 (`multilinePredict` does not).
    """

    def __init__(self, model: Any):
        self.labels = tuple(label.removeprefix(LABEL_PREFIX) for label in model.get_labels())
        args = model.f.getArgs()
        self._loss = args.loss.name
        if model.is_quantized() or args.maxn > 0 or self._loss not in ("softmax", "ova"):
            self._model = model
            return
        self._model = None
        words = model.get_words(on_unicode_error="replace")
        self._vocabulary = pa.array(words, pa.string())
        self._word_hashes = fnv1a_hashes(self._vocabulary)
        self._end_of_line = words.index(END_OF_LINE) if END_OF_LINE in words else -1
        self._end_of_line_hash = fnv1a_hashes(pa.array([END_OF_LINE]))[0]
        self._word_count = len(words)
        self._bucket = args.bucket
        self._ngrams = args.wordNgrams if args.bucket > 0 else 1
        row_logits = model.get_input_matrix() @ model.get_output_matrix().T
        if self._loss == "softmax":
            # Softmax ignores a shift shared by all labels, so logits relative to the first label suffice:
            # one column fewer to gather (a single one for a binary classifier).
            row_logits = row_logits[:, 1:] - row_logits[:, :1]
        # A last row of zeros: row -1 stands for a feature the model does not have.
        self._row_logits = np.vstack([row_logits, np.zeros((1, row_logits.shape[1]), np.float32)]).astype(np.float32)
        if self._row_logits.shape[1] == 1:
            self._row_logits = self._row_logits[:, 0]

    @classmethod
    def load(cls, path: str | Path) -> FastTextClassifier:
        """Load a model file or a classifier directory."""
        return cls(load_fasttext(path))

    def predict(self, tokens: pa.ListArray) -> np.ndarray:
        """Probabilities, one row per document and one column per label (in `labels` order).

        A document with no known word or n-gram gets NaN, where fastText would predict nothing.
        """
        if isinstance(tokens, pa.ChunkedArray):
            tokens = tokens.combine_chunks()
        parts = [
            self._predict_chunk(tokens.slice(start, PREDICT_CHUNK_ROWS))
            for start in range(0, len(tokens), PREDICT_CHUNK_ROWS)
        ]
        return np.concatenate(parts) if parts else np.empty((0, len(self.labels)), np.float32)

    def _predict_chunk(self, tokens: pa.ListArray) -> np.ndarray:
        if self._model is not None:
            return self._predict_with_fasttext(tokens)
        logits = self._logits(tokens)
        if self._loss == "ova":
            return fasttext_sigmoid(logits).astype(np.float32)
        logits = np.hstack([np.zeros((len(logits), 1)), logits])
        logits -= logits.max(axis=1, keepdims=True)
        exponentials = np.exp(logits)
        return (exponentials / exponentials.sum(axis=1, keepdims=True)).astype(np.float32)

    def _logits(self, tokens: pa.ListArray) -> np.ndarray:
        """Mean row logits of each document's words and n-grams, found as fastText's Dictionary::getLine does.

        Works on one flat array of every document's words, each line followed by END_OF_LINE; a
        feature that does not exist (unknown word, n-gram across two documents) points at row -1,
        which holds zeros.
        """
        words = pc.list_flatten(tokens)
        lengths = pc.list_value_length(tokens).to_numpy(zero_copy_only=False).astype(np.int64) + 1
        line_ends = np.cumsum(lengths) - 1
        line_starts = line_ends - lengths + 1
        is_word = np.ones(int(line_ends[-1]) + 1, bool)
        is_word[line_ends] = False

        word_ids = pc.fill_null(pc.index_in(words, value_set=self._vocabulary), -1).to_numpy()
        known = word_ids >= 0
        hashes = self._word_hashes[word_ids]
        if not known.all():
            hashes[~known] = fnv1a_hashes(pc.filter(words, pa.array(~known)))
        line_ids = np.full(len(is_word), self._end_of_line, np.int64)
        line_ids[is_word] = word_ids
        line_hashes = np.full(len(is_word), self._end_of_line_hash, np.uint32)
        line_hashes[is_word] = hashes

        contributions = self._row_logits[line_ids]
        features = np.add.reduceat((line_ids >= 0).astype(np.int64), line_starts)
        # fastText keeps word hashes as int32 and widens them to uint64 with sign extension.
        widened = line_hashes.view(np.int32).astype(np.int64).view(np.uint64)
        documents = np.repeat(np.arange(len(tokens)), lengths)
        running = widened
        for span in range(1, self._ngrams):
            running = running[:-1] * np.uint64(NGRAM_MULTIPLIER) + widened[span:]
            rows = (running % np.uint64(self._bucket)).astype(np.int64) + self._word_count
            rows[documents[span:] != documents[:-span]] = -1
            contributions[:-span] += self._row_logits[rows]
            features += np.maximum(lengths - span, 0)
        sums = np.add.reduceat(contributions, line_starts, axis=0, dtype=np.float64).reshape(len(tokens), -1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return sums / features[:, None]

    def _predict_with_fasttext(self, tokens: pa.ListArray) -> np.ndarray:
        index = {LABEL_PREFIX + label: column for column, label in enumerate(self.labels)}
        probabilities = np.full((len(tokens), len(self.labels)), np.nan, np.float32)
        predict = self._model.f.predict
        for row, line in enumerate(fasttext_lines(tokens)):
            for probability, label in predict(line + "\n", -1, 0.0, "replace"):
                probabilities[row, index[label]] = probability
        return probabilities


def fasttext_sigmoid(values: np.ndarray) -> np.ndarray:
    """fastText's sigmoid: a 512-entry table over [-8, 8], 0 and 1 outside it."""
    steps = np.arange(SIGMOID_TABLE_SIZE + 1)
    table = 1.0 / (1.0 + np.exp(-(steps * 2.0 * MAX_SIGMOID / SIGMOID_TABLE_SIZE - MAX_SIGMOID)))
    inside = np.clip(values, -MAX_SIGMOID, MAX_SIGMOID)
    looked_up = table[((inside + MAX_SIGMOID) * SIGMOID_TABLE_SIZE / MAX_SIGMOID / 2).astype(np.int64)]
    return np.where(values < -MAX_SIGMOID, 0.0, np.where(values > MAX_SIGMOID, 1.0, looked_up))


def fnv1a_hashes(strings: pa.Array) -> np.ndarray:
    """fastText's word hash (32-bit FNV-1a over UTF-8 bytes, each byte sign-extended) for every string.

    Vectorised over strings, one step per byte position: strings sorted longest first, so the strings
    still being hashed at position p are always a prefix.
    """
    strings = strings.cast(pa.string())
    count = len(strings)
    if count == 0:
        return np.empty(0, np.uint32)
    offsets = np.frombuffer(strings.buffers()[1], np.int32)[strings.offset : strings.offset + count + 1]
    data = strings.buffers()[2]
    signed_bytes = np.frombuffer(data, np.int8).astype(np.int32).view(np.uint32) if data is not None else np.empty(0, np.uint32)
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")
    starts = offsets[:-1][order]
    # still_open[p] = how many strings are longer than p bytes
    still_open = np.searchsorted(-lengths[order], -np.arange(lengths.max() if count else 0), side="left")
    hashes = np.full(count, FNV_OFFSET, np.uint32)
    prime = np.uint32(FNV_PRIME)
    for position, open_count in enumerate(still_open):
        active = hashes[:open_count]
        active ^= signed_bytes[starts[:open_count] + position]
        active *= prime
    result = np.empty(count, np.uint32)
    result[order] = hashes
    return result
