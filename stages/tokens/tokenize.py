"""`tokenize`: add each document's token ids (EOS appended) and their count, keeping the text.

Encoding is batched and multi-threaded in the tokenizers library; the tokenizer's identity is
stored in the output schema's metadata so every later stage and export can record it.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from gristmill.pipeline.engine.stage import BatchResult, MapStage, StageConfig, register
from gristmill.pipeline.engine.stage_report import ReportedDataset, StageSection
from gristmill.stages.tokens.tokenization import (
    TOKENIZER_METADATA_KEY,
    LoadedTokenizer,
    load_tokenizer,
)

EMPTY_REASON = "empty_text"


class TokenizeConfig(StageConfig):
    tokenizer: str = Field(description="Path to a tokenizer.json or a local tokenizer directory (never downloaded).")
    eos_token: str | None = Field(
        None, description="End-of-document token appended to every document; default: the tokenizer's own."
    )


@register
class Tokenize(MapStage):
    """Tokenize each document's text, append EOS, and add `tokens` (list<uint32>) and `num_tokens`."""

    name = "tokenize"
    Config = TokenizeConfig

    def setup(self) -> None:
        self.tokenizer: LoadedTokenizer = load_tokenizer(self.config.tokenizer, self.config.eos_token)

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        if not hasattr(self, "tokenizer"):
            self.setup()
        schema = input_schema.append(pa.field("tokens", pa.list_(pa.uint32()))).append(pa.field("num_tokens", pa.int32()))
        metadata = dict(input_schema.metadata or {})
        metadata[TOKENIZER_METADATA_KEY] = json.dumps(self.tokenizer.describe(), sort_keys=True).encode()
        return schema.with_metadata(metadata)

    @classmethod
    def report_sections(cls, dataset: ReportedDataset) -> list[StageSection]:
        """The tokenizer, tokens per document, and the documents dropped for having no text to tokenize."""
        documents = tokens = longest = 0
        for batch in dataset.batches(["num_tokens"]):
            documents += batch.num_rows
            tokens += pc.sum(batch.column(0)).as_py() or 0
            longest = max(longest, pc.max(batch.column(0)).as_py() or 0)
        metadata = (dataset.schema.metadata or {}).get(TOKENIZER_METADATA_KEY)
        statistics = {"tokenizer": json.loads(metadata) if metadata else None, "documents": documents,
                      "tokens": tokens, "mean_tokens": tokens / documents if documents else None,
                      "longest_document_tokens": longest,
                      "empty_documents": sum(record.rejected.get(EMPTY_REASON, 0) for record in dataset.records)}
        section = StageSection(f"Tokens: {dataset.name}", statistics)
        section.text(f"{tokens:,} tokens (end-of-document tokens included) in {documents:,} documents, "
                     f"{statistics['empty_documents']:,} dropped without text.")
        section.table([{key: value for key, value in statistics.items() if key != "tokenizer"}])
        if statistics["tokenizer"]:
            section.table([{"tokenizer": key, "value": str(value)} for key, value in statistics["tokenizer"].items()])
        return [section]

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        text = batch.column("text")
        empty = pc.fill_null(pc.equal(pc.utf8_length(text), 0), True)
        reasons = pc.if_else(empty, EMPTY_REASON, pa.nulls(batch.num_rows, pa.string()))
        result = BatchResult.split(batch, reasons)
        kept = result.kept
        tokens = self.tokenizer.encode(kept.column("text").to_pylist())
        kept = kept.append_column("tokens", tokens)
        kept = kept.append_column("num_tokens", pc.list_value_length(tokens).cast(pa.int32()))
        return BatchResult(kept, result.rejected)
