"""What a tokenizer evaluation is asked for and what it measured: shared by the evaluation and its report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gristmill.tokenizer_eval.corpus import CorpusMeasurement
from gristmill.tokenizer_eval.loading import EvalTokenizer
from gristmill.tokenizer_eval.proxy import ProxySettings


@dataclass(frozen=True)
class EvaluationOptions:
    sample_bytes: int = 4_000_000
    seed: int = 0
    max_groups: int = 12
    core_words: int = 500
    parallel: Path | None = None
    reference_language: str = "en"
    domain_column: str | None = None
    proxy: ProxySettings | None = None  # train a small GPT per tokenizer at fixed compute (optional, needs torch)


@dataclass
class TokenizerResult:
    tokenizer: EvalTokenizer
    corpus: CorpusMeasurement
    vocabulary: dict[str, Any]
    coverage: dict[str, dict[str, Any]]
    parity: dict[str, dict[str, Any]] | None
