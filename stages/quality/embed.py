"""`embed`: add a fixed-size float16 embedding of each document, L2-normalised so cosine similarity is a dot product,
for semantic dedup and cluster balance downstream. The encoder runs offline: the bundled all-MiniLM-L6-v2 or a local
model folder, on CPU or one GPU."""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from gristmill.pipeline.engine.stage import (
    BatchResult,
    MapStage,
    Resources,
    StageConfig,
    empty_rejects,
    register,
)
from gristmill.pipeline.engine.stage_report import ReportedDataset, StageSection
from gristmill.stages.quality.embedding_model import (
    DEFAULT_ENCODER,
    Encoder,
    EncoderFiles,
)
from pydantic import Field, field_validator, model_validator

# Field metadata of the embedding column: the encoder that made it and how long documents were embedded.
EMBEDDING_METADATA_KEY = b"gristmill.embedding"


def embedding_type(dimension: int) -> pa.DataType:
    """The column's Arrow type: one fixed-size list of float16 per document."""
    return pa.list_(pa.float16(), dimension)


def embedding_description(schema: pa.Schema, column: str = "embedding") -> dict[str, Any] | None:
    """What made an embedding column (encoder name, source, weights checksum, dimension, long-document mode), read
    from its field metadata; None for a column the embed stage did not write."""
    if column not in schema.names:
        return None
    raw = (schema.field(column).metadata or {}).get(EMBEDDING_METADATA_KEY)
    return None if raw is None else json.loads(raw)


def embedding_matrix(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """An embedding column as a float32 matrix (rows of zeros where null) and the mask of rows that have one."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    dimension = column.type.list_size
    values = column.values.slice(column.offset * dimension, len(column) * dimension)
    matrix = values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(column), dimension)
    present = np.asarray(pc.is_valid(column))
    matrix[~present] = 0.0
    return matrix, present


class EmbedConfig(StageConfig):
    encoder: str = Field(DEFAULT_ENCODER, description=(
        f"{DEFAULT_ENCODER} (the bundled default, `pip install 'gristmill[quality]'`) or a local "
        "sentence-transformers/Hugging Face model folder."))
    max_tokens: int = Field(256, ge=8, description=(
        "Tokens per encoder pass, special tokens included; at most the encoder's position limit."))
    long_documents: Literal["first", "mean"] = Field("first", description=(
        "first: embed the first max_tokens tokens; mean: the token-weighted mean over consecutive chunks of "
        "max_tokens, at most max_chunks of them."))
    max_chunks: int = Field(8, ge=1, description="With mean: chunks embedded per document; a longer one's rest is left out.")
    batch_size: int = Field(64, ge=1, description="Token sequences per forward pass.")
    device: Literal["cpu", "cuda"] = Field("cpu", description=(
        "cuda: one GPU per task; on Dask the task runs only on workers started with `--resources GPU=1`."))
    text_column: str = Field("text", description="Column holding the text to embed.")
    output_column: str = Field("embedding", description="Name of the fixed-size float16 embedding column to add.")

    @field_validator("encoder")
    @classmethod
    def encoder_is_found(cls, encoder: str) -> str:
        """A missing package or a folder without the model's files is an error before any task starts."""
        EncoderFiles(encoder, option=None)
        return encoder

    @model_validator(mode="after")
    def chunks_only_with_mean(self) -> EmbedConfig:
        if self.long_documents == "first":
            self.refuse_unused(("max_chunks",), "applies only with long_documents: mean")
        return self


@register
class Embed(MapStage):
    """Add a fixed-size float16 embedding column, L2-normalised (null where the text has no tokens)."""

    name = "embed"
    Config = EmbedConfig
    resources = Resources(cpus=1, memory_gb=2)

    @classmethod
    def resources_for(cls, config: EmbedConfig) -> Resources:
        """One GPU per task on cuda, so Dask sends the task only to a worker that has one."""
        return cls.resources.model_copy(update={"gpus": 1.0 if config.device == "cuda" else 0.0})

    def setup(self) -> None:
        """Load the encoder once per worker; a GPU that is missing or a max_tokens past the encoder's limit end the
        task here, in one line, before any batch."""
        config = self.config
        if config.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError("embed: device cuda, but torch finds no GPU on this worker (a CPU build of torch, "
                                   "or no GPU visible)")
        self.encoder = Encoder(config.encoder, config.max_tokens, config.device)
        if self.encoder.max_tokens < config.max_tokens:
            raise ValueError(f"embed: max_tokens {config.max_tokens} is more than the encoder's limit of "
                             f"{self.encoder.max_tokens} tokens")
        self.chunks_per_document = config.max_chunks if config.long_documents == "mean" else 1
        self.special_tokens = self.encoder.max_tokens - self.encoder.chunk_content_tokens
        self.field = self.output_field(self.encoder)

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        config = self.config
        if config.output_column in input_schema.names:
            raise ValueError(f"embed: column {config.output_column!r} already exists in the input")
        if config.text_column not in input_schema.names:
            raise ValueError(f"embed: the input has no text column {config.text_column!r}")
        # The planning process may build the schema without a task's setup (and without a GPU): describe on CPU.
        encoder = self.encoder if hasattr(self, "encoder") else Encoder(config.encoder, config.max_tokens, "cpu")
        return input_schema.append(self.output_field(encoder))

    def output_field(self, encoder: Encoder) -> pa.Field:
        """The embedding column's field, its metadata naming the encoder and how long documents were embedded."""
        config = self.config
        description = {"encoder": encoder.description, "long_documents": config.long_documents,
                       "max_chunks": config.max_chunks if config.long_documents == "mean" else 1}
        return pa.field(config.output_column, embedding_type(encoder.dimension),
                        metadata={EMBEDDING_METADATA_KEY: json.dumps(description, sort_keys=True)})

    def embed(self, texts: list[str | None]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """Unit float32 vectors of the texts that have tokens (zeros elsewhere), that mask, and the batch's counters.

        One chunk more than embedded is tokenised, to count the documents that were cut."""
        kept_chunks = self.chunks_per_document
        chunks = self.encoder.chunk_ids(texts, kept_chunks + 1)
        chunk_counts = np.fromiter((len(document) for document in chunks), np.int64, len(chunks))
        truncated = chunk_counts > kept_chunks
        chunk_counts = np.minimum(chunk_counts, kept_chunks)
        sequences = [sequence for document, count in zip(chunks, chunk_counts) for sequence in document[:count]]
        content_tokens = np.fromiter((len(sequence) for sequence in sequences), np.int64, len(sequences))
        content_tokens -= self.special_tokens
        owners = np.repeat(np.arange(len(texts)), chunk_counts)
        tokens_per_document = np.bincount(owners, weights=content_tokens, minlength=len(texts))
        present = tokens_per_document > 0
        embedded = present[owners]  # chunks of documents that have text
        vectors = np.zeros((len(texts), self.encoder.dimension), np.float32)
        if embedded.any():
            chunk_vectors = self.encoder.embed_ids([sequence for sequence, keep in zip(sequences, embedded) if keep],
                                                   self.config.batch_size)
            # A token-weighted sum over a document's chunks; with one chunk each it is the chunk's vector itself.
            weights = content_tokens[embedded].astype(np.float32)[:, None] if kept_chunks > 1 else 1.0
            np.add.at(vectors, owners[embedded], chunk_vectors * weights)
            vectors[present] /= np.linalg.norm(vectors[present], axis=1, keepdims=True)
        stats = {"embedded_documents": int(present.sum()), "empty_texts": int((~present).sum()),
                 "truncated_documents": int((truncated & present).sum()),
                 "embedded_tokens": int(content_tokens[embedded].sum()), "embedded_chunks": int(embedded.sum())}
        return vectors, present, stats

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        """Every row kept, with its vector or a null."""
        vectors, present, stats = self.embed(batch.column(self.config.text_column).to_pylist())
        values = pa.array(vectors.astype(np.float16).ravel(), pa.float16())
        column = pa.FixedSizeListArray.from_arrays(values, self.encoder.dimension, mask=pa.array(~present))
        return BatchResult(batch.append_column(self.field, column), empty_rejects(), stats)

    @classmethod
    def report_sections(cls, dataset: ReportedDataset) -> list[StageSection]:
        """Documents embedded and left null, the encoder, and how far the stored float16 vectors are from unit length."""
        columns = [name for name in dataset.schema.names if embedding_description(dataset.schema, name)]
        if not columns:
            return []
        column = dataset.config.get("output_column") if dataset.config.get("output_column") in columns else columns[-1]
        description = embedding_description(dataset.schema, column)
        encoder = description["encoder"]
        embedded, norm_sum, norm_min, norm_max = 0, 0.0, np.inf, -np.inf  # streamed: a dataset of any size
        for batch in dataset.batches([column]):
            matrix, present = embedding_matrix(batch.column(0))
            norms = np.linalg.norm(matrix[present], axis=1)
            if norms.size:
                embedded += norms.size
                norm_sum += float(norms.sum())
                norm_min, norm_max = min(norm_min, float(norms.min())), max(norm_max, float(norms.max()))
        stats = dataset.stats
        statistics = {
            "column": column, "dimension": encoder["dimension"], "encoder": encoder,
            "long_documents": description["long_documents"], "max_chunks": description["max_chunks"],
            "embedded_documents": embedded, "empty_texts": int(stats.get("empty_texts", 0)),
            "truncated_documents": int(stats.get("truncated_documents", 0)),
            "embedded_tokens": int(stats.get("embedded_tokens", 0)),
            "norm": {"min": norm_min, "mean": norm_sum / embedded, "max": norm_max} if embedded else None,
        }
        section = StageSection(f"Embeddings: {dataset.name}", statistics)
        section.text(f"`{column}`: {embedded} documents embedded by {encoder['name']} ({encoder['source']}, weights "
                     f"{encoder['weights_checksum']}) into {encoder['dimension']} float16 dimensions; "
                     f"{statistics['empty_texts']} without text left null.")
        section.table([
            {"measure": "long documents", "value": f"{description['long_documents']} "
                                                   f"(max_tokens {encoder['max_tokens']}, chunks {description['max_chunks']})"},
            {"measure": "documents longer than embedded", "value": statistics["truncated_documents"]},
            {"measure": "tokens embedded", "value": statistics["embedded_tokens"]},
            *([{"measure": "vector norm, min to max", "value": f"{norm_min:.5f} to {norm_max:.5f}"}] if embedded else []),
        ])
        return [section]
