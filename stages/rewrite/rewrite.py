"""`rewrite`: rephrase documents with an LLM (WRAP styles, math restatement, code rewriting), checked for fidelity.

Synthetic rephrasings train better than raw web text alone; every output keeps its original beside it, with provenance and a reason whenever a check kept the original.
"""

from __future__ import annotations

import ast
import functools
import io
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import xxhash
from pydantic import Field, model_validator

from gristmill.pipeline.engine.stage import BatchResult, register
from gristmill.pipeline.engine.stage_report import ReportedDataset, StageSection
from gristmill.stages.rewrite.backends import Request
from gristmill.stages.rewrite.generation import (
    GenerationCache,
    GenerationConfig,
    GeneratingStage,
    cost_stats,
    cost_summary,
    generate_entries,
    generation_key,
    request_seed,
)
from gristmill.stages.rewrite.prompts import PROMPTS_DIR, REWRITE_KINDS, Prompt, load_prompt  # noqa: F401 - named here too
from gristmill.stages.rewrite.report import rewrite_sections

RewriteCache = GenerationCache  # its name before the cache was shared with `annotate`
CACHE_DIR = "rewrite_cache"
Check = Literal["language", "length_ratio", "refusal", "boilerplate", "ngram_overlap", "repetition", "code_parse",
                "truncated"]
ALL_CHECKS: list[Check] = list(typing.get_args(Check))

OUTPUT_FIELDS = [
    pa.field("original_text", pa.string()),
    pa.field("rewrite_status", pa.string()),
    pa.field("rewrite_reason", pa.string()),
    pa.field("rewrite_model", pa.string()),
    pa.field("rewrite_model_fingerprint", pa.string()),
    pa.field("rewrite_prompt_id", pa.string()),
    pa.field("rewrite_prompt_version", pa.int64()),
    pa.field("rewrite_params", pa.string()),
    pa.field("rewrite_tokens_in", pa.int64()),
    pa.field("rewrite_tokens_out", pa.int64()),
    pa.field("rewrite_seconds", pa.float64()),
    pa.field("rewrite_cache_hit", pa.bool_()),
]


class RewriteConfig(GenerationConfig):
    prompt: str = Field("wrap_wikipedia", description="Prompt id from configs/prompts/ or path to a prompt YAML file.")
    chunk_tokens: int | None = Field(
        None, ge=16, description="Most source tokens per chunk; default: what fits the context and max_new_tokens."
    )
    checks: list[Check] = Field(list(ALL_CHECKS), description="Fidelity checks to apply.")
    min_length_ratio: float = Field(0.3, ge=0, description="Shortest output, as a share of the source's characters.")
    max_length_ratio: float = Field(3.0, gt=0, description="Longest output, as a multiple of the source's characters.")
    ngram_size: int = Field(1, ge=1, description="Word n-gram size of the overlap check.")
    min_ngram_overlap: float = Field(
        0.3, ge=0, le=1, description="Least share of the output's distinct word n-grams that also occur in the source."
    )
    max_added_repetition: float = Field(
        0.1, ge=0, le=1, description="Most share of repeated lines the output may have beyond the source's own "
        "(small models loop: they repeat a paragraph and drop another).",
    )
    min_language_chars: int = Field(50, ge=0, description="Sources shorter than this skip the language check.")
    max_documents: int | None = Field(
        None, ge=0, description="Rewrite only the first N selected documents of each shard (trials, demos); the "
        "rest pass through with reason not_selected.",
    )
    languages: list[str] | None = Field(
        None, min_length=1, description="Rewrite only documents whose `lang` is one of these (an English prompt on "
        "a multilingual crawl); the others pass through with reason not_selected.",
    )
    lint: bool = Field(False, description="Code prompts: also require `ruff check` (syntax, undefined names) to pass.")

    @model_validator(mode="after")
    def consistent(self) -> RewriteConfig:
        if self.min_length_ratio >= self.max_length_ratio:
            raise ValueError("min_length_ratio must be below max_length_ratio")
        load_prompt(self.prompt, REWRITE_KINDS)
        return self


# ---------------------------------------------------------------- chunking

SPLITTERS = [  # coarse to fine; every piece keeps the whitespace after it, so pieces concatenate to the text
    re.compile(r"(?<=\n\n)(?=[^\n])"),  # paragraphs
    re.compile(r"(?<=\n)(?=[^\n])"),  # lines
    re.compile(r"(?<=[.!?;。！？])(?=\s)"),  # sentences
    re.compile(r"(?<=\s)(?=\S)"),  # words
]


def split_into_chunks(text: str, budget: int, count_tokens, code: bool = False) -> list[str]:
    """Cut text into consecutive pieces of at most `budget` tokens that concatenate back to it exactly.

    Cuts fall between paragraphs where possible, then lines, sentences, words and, for a single
    giant word, characters; Python `code` is cut between top-level statements first.
    """
    units = top_level_statements(text) if code else [text]
    pieces = [(unit, count) for unit, count in zip(units, count_tokens(units))]
    level = 0
    while any(count > budget for _, count in pieces) and level <= len(SPLITTERS):
        finer: list[tuple[str, int]] = []
        for unit, count in pieces:
            if count <= budget:
                finer.append((unit, count))
                continue
            parts = cut_characters(unit, count, budget) if level == len(SPLITTERS) else [
                part for part in SPLITTERS[level].split(unit) if part
            ]
            finer.extend(zip(parts, count_tokens(parts)) if len(parts) > 1 else [(unit, count)])
        pieces, level = finer, level + 1
    chunks, current, current_tokens = [], "", 0
    for unit, count in pieces:
        if current and current_tokens + count > budget:
            chunks.append(current)
            current, current_tokens = "", 0
        current += unit
        current_tokens += count
    return chunks + [current]


def cut_characters(unit: str, tokens: int, budget: int) -> list[str]:
    size = max(1, len(unit) * budget // max(tokens, 1) - 1)
    return [unit[start:start + size] for start in range(0, len(unit), size)]


def top_level_statements(code: str) -> list[str]:
    """Source pieces that each start at a top-level statement (decorators included); the text itself if it does not parse."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return [code]
    starts = sorted({min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) for node in tree.body})
    lines = io.StringIO(code, newline="").readlines()  # the line ends ast counts; not \u2028, \x0c and the like
    bounds = [0] + [start - 1 for start in starts if start > 1] + [len(lines)]
    return [piece for piece in ("".join(lines[a:b]) for a, b in itertools.pairwise(bounds)) if piece]


def split_whitespace(chunk: str, code: bool = False) -> tuple[str, str, str]:
    """(leading whitespace, text, trailing whitespace); code keeps its indentation and loses only blank lines."""
    core = chunk.strip("\n") if code else chunk.strip()
    if not core.strip():  # whitespace alone is kept as it is, never sent
        return chunk, "", ""
    start = chunk.index(core)
    return chunk[:start], core, chunk[start + len(core):]


# ---------------------------------------------------------------- fidelity checks

REFUSAL = re.compile(
    r"\b(?:I'?m sorry|I am sorry|I apologi[sz]e|I can(?:not|'t| not) (?:help|assist|provide|fulfil|comply|do that|rewrite|paraphrase)"
    r"|I'?m (?:not able|unable) to|I am (?:not able|unable) to|As an AI\b|as a language model)",
    re.IGNORECASE,
)
PREAMBLE = re.compile(
    r"^\s*((?:sure|certainly|of course|okay|ok|absolutely)\b[^\n]*|(?:here(?:'s| is| are)|below is)\b[^\n]*:)\s*\n", re.IGNORECASE
)
CLOSING = re.compile(
    r"\n\s*((?:I hope (?:this|that)|Let me know|Feel free to|Is there anything else|This (?:is a |)(?:paraphrase|rewrit))"
    r"[^\n]*)\s*$", re.IGNORECASE
)
# What makes such a line talk about the task rather than belong to the text ("Of course, the river floods" does not).
CHATTY = re.compile(
    r":\s*$|^\W*\w+(?: \w+)?\W*$|\b(?:rewr|rephras|paraphras|reword|restat|summar|version|here(?:'s| is| are)|below"
    r"|happy to|glad to|I(?:'ll| will| can| have|'ve)|hope (?:this|that)|anything else|questions?|help|adjust|changes?"
    r"|modif|tweak|clarif|further)", re.IGNORECASE,
)
CODE_BLOCK = re.compile(r"```[ \t]*[\w+#.-]*[ \t]*\n(.*?)(?:\n```|$)", re.DOTALL)  # any language tag, or none
WORD = re.compile(r"\w+")
ECHO_WORDS = 8


def strip_boilerplate(output: str, source: str = "") -> tuple[str, bool]:
    """Drop a chatty first line ("Sure! Here is the paraphrase:") and closing offer; say whether anything went.

    Such a line goes only when it talks about the task, and never when the source's own first (last)
    line opens with the same words, so a genuine "Of course, the river floods..." stays.
    """
    source_lines = source.strip().lower().splitlines() or [""]

    def chatty(line: str, source_line: str) -> bool:
        opener = " ".join(WORD.findall(line.lower())[:2])
        return bool(CHATTY.search(line)) and not (opener and " ".join(WORD.findall(source_line)[:2]) == opener)

    stripped = output
    preamble = PREAMBLE.search(stripped)
    if preamble and chatty(preamble[1], source_lines[0]):
        stripped = stripped[preamble.end():]
    closing = CLOSING.search(stripped)
    if closing and chatty(closing[1], source_lines[-1]):
        stripped = stripped[:closing.start()]
    return stripped.strip(), stripped.strip() != output.strip()


def extract_code(output: str) -> str:
    block = CODE_BLOCK.search(output)
    return (block.group(1) if block else output).strip("\n")


def word_ngrams(text: str, size: int) -> set[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    return {tuple(words[index:index + size]) for index in range(len(words) - size + 1)}


def ngram_overlap(output: str, source: str, size: int) -> float:
    """Share of the output's distinct word n-grams that occur in the source (0 for an empty output)."""
    produced = word_ngrams(output, size)
    return len(produced & word_ngrams(source, size)) / len(produced) if produced else 0.0


def repeated_line_share(text: str) -> float:
    """Share of a text's non-blank lines that repeat an earlier line (0 for a text without lines)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return 1 - len(set(lines)) / len(lines) if lines else 0.0


def is_refusal(output: str, source: str) -> bool:
    found = REFUSAL.search(output[:400])
    return found is not None and found.group(0).lower() not in source.lower()


def echoes_instructions(output: str, source: str, instructions: str) -> bool:
    """Whether the output repeats a run of the prompt's own wording that the source does not contain."""
    echoed = word_ngrams(output, ECHO_WORDS) & word_ngrams(instructions, ECHO_WORDS)
    return bool(echoed - word_ngrams(source, ECHO_WORDS))


def parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return False
    return True


def ruff_failures(codes: list[str]) -> list[bool] | None:
    """Which files `ruff check` finds syntax errors or undefined names in; None when ruff is not installed.

    Ruff reads the code; nothing is ever run.
    """
    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None or not codes:
        return None if ruff is None else []
    with tempfile.TemporaryDirectory() as folder:
        for index, code in enumerate(codes):
            Path(folder, f"doc{index}.py").write_text(code)
        result = subprocess.run(
            [ruff, "check", "--no-cache", "--isolated", "--select", "E9,F63,F7,F82", "--output-format", "json", folder],
            capture_output=True, text=True, timeout=300, check=False,
        )
        failing = {Path(item["filename"]).stem for item in json.loads(result.stdout or "[]")}
    return [f"doc{index}" in failing for index in range(len(codes))]


@functools.cache
def language_identifier():
    from gristmill.stages.filters.langid import Py3LangidIdentifier

    return Py3LangidIdentifier()


def base_language(code: str) -> str:
    return code.split("-")[0]


LANGUAGE_NAMES = {
    "ar": "Arabic", "bg": "Bulgarian", "ca": "Catalan", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek",
    "en": "English", "es": "Spanish", "et": "Estonian", "fa": "Persian", "fi": "Finnish", "fr": "French",
    "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "hu": "Hungarian", "id": "Indonesian", "it": "Italian",
    "ja": "Japanese", "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian", "nl": "Dutch", "no": "Norwegian",
    "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sk": "Slovak", "sl": "Slovenian",
    "sr": "Serbian", "sv": "Swedish", "th": "Thai", "tr": "Turkish", "uk": "Ukrainian", "vi": "Vietnamese",
    "zh": "Chinese",
}


def language_name(code: str) -> str:
    """The English name a prompt's ${language} gets; a generic phrase for languages not listed."""
    return LANGUAGE_NAMES.get(base_language(code), "the same language as the text")


# ---------------------------------------------------------------- the stage


@dataclass
class Document:
    id: str
    source: str
    language: str = "und"
    chunks: list[str] = field(default_factory=list)
    outputs: list[dict[str, Any] | None] = field(default_factory=list)  # per chunk: a cache entry, None = no request
    reason: str | None = None
    text: str | None = None


@register
class Rewrite(GeneratingStage):
    """Rephrase `text` with an LLM; failed fidelity checks keep the original, with the reason in `rewrite_reason`."""

    name = "rewrite"
    Config = RewriteConfig
    cache_dir = CACHE_DIR

    def setup(self) -> None:
        """Cheap checks only: the model loads on the first batch, so the planning process never loads it."""
        super().setup()
        self.prompt = load_prompt(self.config.prompt, REWRITE_KINDS)
        self.documents_seen = 0  # selected documents in the current shard, for max_documents

    @property
    def python(self) -> bool:
        """Whether the prompt rewrites Python: only Python is parsed, cut between statements and linted."""
        return self.prompt.kind == "code" and (self.prompt.language or "python").lower() == "python"

    def open_shard(self, shard_name: str, work_dir: Path) -> None:
        """A shard starts: count its documents afresh and keep its generations in `_work/rewrite_cache/`."""
        super().open_shard(shard_name, work_dir)
        self.documents_seen = 0

    def chunk_budget(self) -> int:
        if self.config.chunk_tokens:
            return self.config.chunk_tokens
        overhead = self.backend.count_tokens([self.prompt.instructions])[0] + 32  # chat markup
        room = self.backend.context_length - self.config.max_new_tokens - overhead
        if room < 16:
            raise ValueError(f"rewrite: max_new_tokens {self.config.max_new_tokens} leaves no room for text in a "
                             f"context of {self.backend.context_length} tokens")
        return min(room, max(16, int(self.config.max_new_tokens * 0.8)))  # the rewrite must also fit max_new_tokens

    @classmethod
    def report_sections(cls, dataset: ReportedDataset) -> list[StageSection]:
        """Outcomes by status and reason, throughput and cost, and a few documents before and after."""
        return rewrite_sections(dataset, cost_summary(dataset.stats))

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        for output_field in OUTPUT_FIELDS:
            index = input_schema.get_field_index(output_field.name)
            input_schema = input_schema.set(index, output_field) if index >= 0 else input_schema.append(output_field)
        return input_schema

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        code = self.prompt.kind == "code"
        documents = [Document(str(doc_id), text or "") for doc_id, text in
                     zip(batch.column("id").to_pylist(), batch.column("text").to_pylist())]
        wanted = set(self.config.languages or [])
        languages = batch.column("lang").to_pylist() if wanted else [None] * len(documents)
        for doc, language in zip(documents, languages):
            if wanted and language not in wanted:
                doc.reason = "not_selected"
            elif self.config.max_documents is not None and self.documents_seen >= self.config.max_documents:
                doc.reason = "not_selected"
            else:
                self.documents_seen += 1
            if doc.reason is not None:
                continue
            if not doc.source.strip():
                doc.reason = "empty"
            elif self.python and "code_parse" in self.config.checks and not parses(doc.source):
                doc.reason = "code_parse"  # as SwallowCode: a source that does not parse is not worth a generation
        pending = [doc for doc in documents if doc.reason is None]
        if pending and not code:
            codes, _ = language_identifier().identify([doc.source.replace("\n", " ") for doc in pending])
            for doc, language in zip(pending, codes):
                doc.language = language
        stats: dict[str, float] = {"rewrite_cache_hits": 0, "rewrite_generations": 0, "rewrite_chunks": 0}
        if pending:
            budget = self.chunk_budget()
            for doc in pending:
                doc.chunks = split_into_chunks(doc.source, budget, self.backend.count_tokens, self.python)
            self._generate(pending, stats)
        self._check(pending, stats)
        result = BatchResult.keep_all(self._annotate(batch, documents, stats))
        result.stats = stats
        return result

    def _generate(self, documents: list[Document], stats: dict[str, float]) -> None:
        """Fill every chunk's output from the cache or the backend, saving each generate call's results."""
        missing: list[tuple[Document, int, str, Request]] = []
        language_names = {doc.language: language_name(doc.language) for doc in documents}
        for doc in documents:
            doc.outputs = [None] * len(doc.chunks)
            for index, chunk in enumerate(doc.chunks):
                core = split_whitespace(chunk, self.prompt.kind == "code")[1]
                if not core:
                    continue
                stats["rewrite_chunks"] += 1
                key = self.cache_key(doc.id, index, core)
                cached = self.cached(key)
                if cached is not None:
                    doc.outputs[index] = cached
                    stats["rewrite_cache_hits"] += 1
                    continue
                request = Request(self.prompt.messages(core, language_names[doc.language]),
                                  request_seed(self.config.seed, doc.id, index))
                missing.append((doc, index, key, request))
        entries = generate_entries(self.backend, [(key, request) for *_, key, request in missing], self.sampling,
                                   self.config.batch_size, self.cache)
        stats["rewrite_generations"] += len(missing)
        for (doc, index, *_), entry in zip(missing, entries):
            doc.outputs[index] = entry

    def cache_key(self, doc_id: str, chunk_index: int, chunk: str) -> str:
        return generation_key(doc_id, chunk_index, xxhash.xxh3_64_hexdigest(chunk.encode()), self.prompt.id,
                              self.prompt.version, self.model_identity, self.params_json)

    def _check(self, documents: list[Document], stats: dict[str, float]) -> None:
        """Reassemble each document from its chunks and keep the original where a fidelity check fails."""
        checks, code = set(self.config.checks), self.prompt.kind == "code"
        for doc in documents:
            pieces = []
            for chunk, output in zip(doc.chunks, doc.outputs):
                lead, core, trail = split_whitespace(chunk, code)
                if output is None:
                    pieces.append(chunk)
                    continue
                if output["error"] is not None:
                    doc.reason = doc.reason or "generation_error"
                    continue
                if "truncated" in checks and output["finish_reason"] == "length":
                    doc.reason = doc.reason or "truncated"
                if "refusal" in checks and is_refusal(output["text"], core):
                    doc.reason = doc.reason or "refusal"
                text = extract_code(output["text"]) if code else output["text"]
                text, stripped = strip_boilerplate(text, core) if not code else (text, False)
                stats["rewrite_boilerplate_stripped"] = stats.get("rewrite_boilerplate_stripped", 0) + stripped
                pieces.append(lead + (text if code else text.strip()) + trail)
            doc.text = "".join(pieces)
        self._language_check(documents, checks, code)
        for doc in documents:
            doc.reason = doc.reason or self._fidelity_reason(doc, checks, code)
        self._lint_check(documents, stats)

    def _fidelity_reason(self, doc: Document, checks: set[str], code: bool) -> str | None:
        config = self.config
        if "boilerplate" in checks and echoes_instructions(doc.text, doc.source, self.prompt.instructions):
            return "boilerplate"
        if self.python and "code_parse" in checks and not parses(doc.text):
            return "code_parse"
        if "length_ratio" in checks:
            ratio = len(doc.text) / max(len(doc.source), 1)
            if not config.min_length_ratio <= ratio <= config.max_length_ratio:
                return "length_ratio"
        if "ngram_overlap" in checks and ngram_overlap(doc.text, doc.source, config.ngram_size) < config.min_ngram_overlap:
            return "ngram_overlap"
        if "repetition" in checks and (repeated_line_share(doc.text) - repeated_line_share(doc.source)
                                       > config.max_added_repetition):
            return "repetition"
        return None

    def _language_check(self, documents: list[Document], checks: set[str], code: bool) -> None:
        if code or "language" not in checks:
            return
        candidates = [doc for doc in documents if doc.reason is None and len(doc.source) >= self.config.min_language_chars]
        if not candidates:
            return
        codes, _ = language_identifier().identify([doc.text.replace("\n", " ") for doc in candidates])
        for doc, language in zip(candidates, codes):
            if base_language(language) != base_language(doc.language):
                doc.reason = "language_mismatch"

    def _lint_check(self, documents: list[Document], stats: dict[str, float]) -> None:
        if not (self.python and self.config.lint):
            return
        candidates = [doc for doc in documents if doc.reason is None]
        failures = ruff_failures([doc.text for doc in candidates])
        if failures is None:
            stats["rewrite_lint_skipped"] = stats.get("rewrite_lint_skipped", 0) + len(candidates)
            return
        for doc, failed in zip(candidates, failures):
            if failed:
                doc.reason = "code_lint"

    def _annotate(self, batch: pa.RecordBatch, documents: list[Document], stats: dict[str, float]) -> pa.RecordBatch:
        texts, statuses, reasons, tokens_in, tokens_out, seconds, hits = [], [], [], [], [], [], []
        gpu_seconds = 0.0
        for doc in documents:
            outputs = [output for output in doc.outputs if output is not None and output["error"] is None]
            rewritten = doc.reason is None
            texts.append(doc.text if rewritten else doc.source)
            statuses.append("rewritten" if rewritten else "kept_original")
            reasons.append(doc.reason)
            tokens_in.append(sum(output["tokens_in"] for output in outputs))
            tokens_out.append(sum(output["tokens_out"] for output in outputs))
            seconds.append(sum(output["seconds"] for output in outputs))
            gpu_seconds += sum(output["gpu_seconds"] for output in outputs)
            hits.append(bool(doc.outputs) and all(output is None or output["cache_hit"] for output in doc.outputs))
            status_key = "rewritten" if rewritten else f"kept_original:{doc.reason}"
            stats[status_key] = stats.get(status_key, 0) + 1
        rows = batch.num_rows
        stats |= cost_stats("rewrite", sum(tokens_in), sum(tokens_out), sum(seconds), gpu_seconds,
                            self.config.price_per_gpu_hour)
        columns = {
            "original_text": batch.column("text"),
            "rewrite_status": pa.array(statuses, pa.string()),
            "rewrite_reason": pa.array(reasons, pa.string()),
            "rewrite_model": pa.array([self.model_name] * rows, pa.string()),
            "rewrite_model_fingerprint": pa.array([self.model_identity] * rows, pa.string()),
            "rewrite_prompt_id": pa.array([self.prompt.id] * rows, pa.string()),
            "rewrite_prompt_version": pa.array([self.prompt.version] * rows, pa.int64()),
            "rewrite_params": pa.array([self.params_json] * rows, pa.string()),
            "rewrite_tokens_in": pa.array(tokens_in, pa.int64()),
            "rewrite_tokens_out": pa.array(tokens_out, pa.int64()),
            "rewrite_seconds": pa.array(seconds, pa.float64()),
            "rewrite_cache_hit": pa.array(hits, pa.bool_()),
        }
        # A null text stays null; every other kept original is the source text unchanged.
        text = pa.array([None if original is None else value
                         for original, value in zip(batch.column("text").to_pylist(), texts)], pa.string())
        annotated = batch.set_column(batch.schema.get_field_index("text"), "text", text)
        for name, values in columns.items():
            index = annotated.schema.get_field_index(name)
            annotated = annotated.set_column(index, name, values) if index >= 0 else annotated.append_column(name, values)
        return annotated

