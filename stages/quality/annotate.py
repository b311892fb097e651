"""`annotate`: an LLM grades documents against a rubric prompt (educational value, instruction-likeness, code, maths),
so quality classifiers can be trained on the grades, as FineWeb-Edu trained its classifier on an LLM's scores.

Every document is kept: one that is not sampled, or whose answer is empty, does not parse or falls outside the rubric's
range, gets a null score and a reason. Backend, batching, cache and cost accounting are the rewrite stage's.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from pydantic import Field, model_validator

from gristmill.pipeline.engine.stage import BatchResult, ReduceContext, StageConfig, register
from gristmill.pipeline.engine.stage_report import ReportedDataset, StageSection
from gristmill.stages.rewrite.backends import Request
from gristmill.stages.rewrite.generation import (
    GenerationConfig,
    GeneratingStage,
    cost_stats,
    cost_summary,
    generate_entries,
    generation_key,
    request_seed,
)
from gristmill.stages.rewrite.prompts import GRADE_KINDS, GradePrompt, load_prompt
from gristmill.stages.rewrite.rewrite import split_into_chunks

CACHE_DIR = "annotate_cache"
STATS_PREFIX = "annotation"
REASONS = ("not_sampled", "empty_text", "generation_error", "empty", "unparsed", "out_of_range")
HASH_RANGE = 1 << 64

OUTPUT_FIELDS = [
    pa.field("annotation_score", pa.float64()),
    pa.field("annotation_reason", pa.string()),
    pa.field("annotation_answer", pa.string()),
    pa.field("annotation_model", pa.string()),
    pa.field("annotation_model_fingerprint", pa.string()),
    pa.field("annotation_prompt_id", pa.string()),
    pa.field("annotation_prompt_version", pa.int64()),
    pa.field("annotation_tokens_in", pa.int64()),
    pa.field("annotation_tokens_out", pa.int64()),
    pa.field("annotation_cache_hit", pa.bool_()),
]


class AnnotateConfig(GenerationConfig):
    prompt: str = Field(
        "educational_value", description="Grading prompt id from configs/prompts/ (educational_value, "
        "instruction_likeness, code_quality, math_reasoning) or path to a YAML file of kind grade.",
    )
    temperature: float = Field(0.0, ge=0, description="Sampling temperature; 0 (the default) is greedy.")
    max_new_tokens: int = Field(256, ge=1, description="Most tokens of one answer (a short justification, then the score).")
    sample: int | None = Field(
        None, ge=1, description="Grade exactly this many documents of the whole dataset: those whose seeded id hash "
        "is smallest, the same whatever the shard and worker counts (one pass over the ids first).",
    )
    sample_fraction: float | None = Field(
        None, gt=0, le=1, description="Grade about this share of documents: those whose seeded id hash falls below it.",
    )
    sample_seed: int = Field(0, description="Seed of the id hash that draws the sample.")
    max_text_tokens: int | None = Field(
        None, ge=16, description="Most tokens of a document shown to the model; the rest is cut at a paragraph, line, "
        "sentence or word (default: what fits the context beside the prompt and the answer).",
    )

    @model_validator(mode="after")
    def consistent(self) -> AnnotateConfig:
        if self.sample is not None and self.sample_fraction is not None:
            raise ValueError("give sample (a number of documents) or sample_fraction, not both")
        load_prompt(self.prompt, GRADE_KINDS)
        return self


def sample_hashes(ids: list[str], seed: int) -> list[int]:
    """Each id's place in the sampling order: a seeded 64-bit hash, independent of shard, batch and worker."""
    prefix = f"{seed}\0".encode()
    return [xxhash.xxh64_intdigest(prefix + doc_id.encode()) for doc_id in ids]


def smallest_hashes(ids: list[str], seed: int, count: int) -> pa.Table:
    """The `count` ids with the smallest hashes, as (hash, id): all a global exact sample needs to know."""
    table = pa.table({"hash": pa.array(sample_hashes(ids, seed), pa.uint64()), "id": pa.array(ids, pa.string())})
    order = pc.sort_indices(table, sort_keys=[("hash", "ascending"), ("id", "ascending")])
    return table.take(order[:count])


@register
class Annotate(GeneratingStage):
    """Grade `text` with an LLM and a rubric prompt; adds `annotation_*` columns, never drops a document."""

    name = "annotate"
    Config = AnnotateConfig
    cache_dir = CACHE_DIR

    @classmethod
    def needs_global_view_for(cls, config: StageConfig) -> bool:
        """An exact `sample` of N documents needs every shard's smallest id hashes first; a fraction does not."""
        return getattr(config, "sample", None) is not None

    def setup(self) -> None:
        super().setup()
        self.prompt: GradePrompt = load_prompt(self.config.prompt, GRADE_KINDS)
        self.global_view: tuple[int, str] | None = None  # the last (hash, id) of an exact sample; None: take all
        self._text_budget: int | None = None

    def summarize(self, batch: pa.RecordBatch) -> pa.Table:
        """The batch's N + 1 smallest (hash, id): enough to find the N-th overall, and to tell a dataset of more
        than N documents from one of N."""
        ids = [str(doc_id) for doc_id in batch.column("id").to_pylist()]
        return smallest_hashes(ids, self.config.sample_seed, self.config.sample + 1)

    def reduce(self, context: ReduceContext) -> tuple[int, str] | None:
        """The (hash, id) of the N-th document in hash order; None when the dataset holds no more than N."""
        summaries = context.read_summaries()
        if summaries is None or summaries.num_rows <= self.config.sample:
            return None
        order = pc.sort_indices(summaries, sort_keys=[("hash", "ascending"), ("id", "ascending")])
        last = summaries.take(order[self.config.sample - 1:self.config.sample]).to_pylist()[0]
        return int(last["hash"]), str(last["id"])

    def selected(self, ids: list[str]) -> list[bool]:
        """Which documents are graded: all, those below the fraction, or those up to the global N-th (hash, id)."""
        config = self.config
        if config.sample is None and config.sample_fraction is None:
            return [True] * len(ids)
        hashes = sample_hashes(ids, config.sample_seed)
        if config.sample_fraction is not None:
            below = int(config.sample_fraction * HASH_RANGE)
            return [value < below for value in hashes]
        if self.global_view is None:
            return [True] * len(ids)
        last = self.global_view
        return [(value, doc_id) <= last for value, doc_id in zip(hashes, ids)]

    def text_budget(self) -> int:
        """Most tokens of a document shown to the model: `max_text_tokens`, or what the context leaves."""
        if self._text_budget is None:
            overhead = self.backend.count_tokens([self.prompt.instructions])[0] + 32  # chat markup
            room = self.backend.context_length - self.config.max_new_tokens - overhead
            if room < 16:
                raise ValueError(f"annotate: max_new_tokens {self.config.max_new_tokens} leaves no room for text in a "
                                 f"context of {self.backend.context_length} tokens")
            self._text_budget = min(room, self.config.max_text_tokens or room)
        return self._text_budget

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        for output_field in OUTPUT_FIELDS:
            index = input_schema.get_field_index(output_field.name)
            input_schema = input_schema.set(index, output_field) if index >= 0 else input_schema.append(output_field)
        return input_schema

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        ids = [str(doc_id) for doc_id in batch.column("id").to_pylist()]
        texts = [text or "" for text in batch.column("text").to_pylist()]
        outcomes: list[dict[str, Any]] = [{"reason": None, "entry": None} for _ in ids]
        stats: dict[str, float] = {"annotation_generations": 0, "annotation_cache_hits": 0, "annotation_truncated_texts": 0}
        graded: list[int] = []
        for index, (text, chosen) in enumerate(zip(texts, self.selected(ids))):
            if not chosen:
                outcomes[index]["reason"] = "not_sampled"
            elif not text.strip():
                outcomes[index]["reason"] = "empty_text"  # nothing to grade, no generation spent
            else:
                graded.append(index)
        missing: list[tuple[str, Request]] = []
        waiting: list[int] = []
        for index, shown in zip(graded, self.shown_texts([texts[index] for index in graded], stats)):
            doc_id = ids[index]
            key = generation_key(doc_id, xxhash.xxh3_64_hexdigest(shown.encode()), self.prompt.id, self.prompt.version,
                                 self.model_identity, self.params_json)
            cached = self.cached(key)
            if cached is not None:
                outcomes[index]["entry"] = cached
                stats["annotation_cache_hits"] += 1
                continue
            missing.append((key, Request(self.prompt.messages(shown), request_seed(self.config.seed, doc_id))))
            waiting.append(index)
        if missing:
            entries = generate_entries(self.backend, missing, self.sampling, self.config.batch_size, self.cache)
            stats["annotation_generations"] += len(missing)
            for index, entry in zip(waiting, entries):
                outcomes[index]["entry"] = entry
        result = BatchResult.keep_all(self._annotate(batch, outcomes, stats))
        result.stats = stats
        return result

    def shown_texts(self, texts: list[str], stats: dict[str, float]) -> list[str]:
        """The documents as the model sees them: whole, or their first piece of at most the text budget's tokens,
        cut where a rewrite would cut its first chunk (paragraph, line, sentence, word)."""
        if not texts:
            return []
        budget = self.text_budget()
        shown = []
        for text, tokens in zip(texts, self.backend.count_tokens(texts)):
            if tokens > budget:
                stats["annotation_truncated_texts"] += 1
                text = split_into_chunks(text, budget, self.backend.count_tokens)[0]
            shown.append(text)
        return shown

    def _annotate(self, batch: pa.RecordBatch, outcomes: list[dict[str, Any]], stats: dict[str, float]) -> pa.RecordBatch:
        scores, reasons, answers, tokens_in, tokens_out, hits = [], [], [], [], [], []
        seconds = gpu_seconds = 0.0
        for outcome in outcomes:
            entry, score, reason = outcome["entry"], None, outcome["reason"]
            if entry is not None and entry["error"] is not None:
                reason = "generation_error"  # never cached, so a rerun asks again
            elif entry is not None:
                score, reason = self.prompt.parse(entry["text"])
                seconds += entry["seconds"]
                gpu_seconds += entry["gpu_seconds"]
            scores.append(score)
            reasons.append(reason)
            answers.append(None if entry is None or entry["error"] is not None else entry["text"])
            tokens_in.append(entry["tokens_in"] if entry is not None else 0)
            tokens_out.append(entry["tokens_out"] if entry is not None else 0)
            hits.append(bool(entry is not None and entry["cache_hit"]))
            outcome_key = "annotation_scored" if reason is None else f"annotation_unscored:{reason}"
            stats[outcome_key] = stats.get(outcome_key, 0) + 1
        stats |= cost_stats(STATS_PREFIX, sum(tokens_in), sum(tokens_out), seconds, gpu_seconds,
                            self.config.price_per_gpu_hour)
        rows = batch.num_rows
        columns = {
            "annotation_score": pa.array(scores, pa.float64()),
            "annotation_reason": pa.array(reasons, pa.string()),
            "annotation_answer": pa.array(answers, pa.string()),
            "annotation_model": pa.array([self.model_name] * rows, pa.string()),
            "annotation_model_fingerprint": pa.array([self.model_identity] * rows, pa.string()),
            "annotation_prompt_id": pa.array([self.prompt.id] * rows, pa.string()),
            "annotation_prompt_version": pa.array([self.prompt.version] * rows, pa.int64()),
            "annotation_tokens_in": pa.array(tokens_in, pa.int64()),
            "annotation_tokens_out": pa.array(tokens_out, pa.int64()),
            "annotation_cache_hit": pa.array(hits, pa.bool_()),
        }
        annotated = batch
        for name, values in columns.items():
            index = annotated.schema.get_field_index(name)
            annotated = annotated.set_column(index, name, values) if index >= 0 else annotated.append_column(name, values)
        return annotated

    @classmethod
    def report_sections(cls, dataset: ReportedDataset) -> list[StageSection]:
        """Documents by score and by reason, and throughput and cost, from the columns and counters the stage writes."""
        scores: dict[str, int] = {}
        for batch in dataset.batches(["annotation_score", "annotation_reason"]):
            labels = pc.if_else(pc.is_null(batch.column("annotation_score")),
                                pc.binary_join_element_wise("unscored: ", pc.fill_null(batch.column("annotation_reason"), "?"), ""),
                                pc.cast(batch.column("annotation_score"), pa.string()))
            for row in pa.table({"outcome": labels}).group_by("outcome").aggregate([("outcome", "count")]).to_pylist():
                scores[row["outcome"]] = scores.get(row["outcome"], 0) + row["outcome_count"]
        cost = cost_summary(dataset.stats, STATS_PREFIX)
        statistics = {"outcomes": [{"outcome": outcome, "documents": count} for outcome, count in sorted(scores.items())],
                      "cost": cost}
        scored = sum(count for outcome, count in scores.items() if not outcome.startswith("unscored"))
        section = StageSection(f"Annotate: {dataset.name}", statistics)
        section.text(f"{scored:,} of {sum(scores.values()):,} documents have a score; the others keep a null score "
                     "and the reason.")
        section.table(statistics["outcomes"]).table([{"measure": key, "value": value} for key, value in cost.items()])
        return [section]
