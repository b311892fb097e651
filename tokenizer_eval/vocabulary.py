"""Vocabulary metrics, as in Qtok: what kinds of tokens a vocabulary holds, which Unicode scripts they are written in,
and how many of the data's most frequent words it holds as single tokens.
"""

from __future__ import annotations

import functools
import unicodedata
from collections import Counter
from typing import Any

from fontTools import unicodedata as script_data

from gristmill.tokenizer_eval.loading import EvalTokenizer, TokenVocabulary
from gristmill.tokenizer_eval.sample import OTHER, CorpusSample

# In precedence order: a token gets the first category whose test it passes.
CATEGORIES = ("control", "byte_fallback", "single_character", "whitespace", "digits_punctuation", "word_initial",
              "word_internal")
SPECIAL_SCRIPT = "Special"
BYTES_SCRIPT = "Bytes"
COMMON_SCRIPT = "Common"
MIXED_SCRIPT = "Mixed"
# Unicode's Common, Inherited and Unknown: characters (digits, punctuation, marks) that belong to no one script.
SHARED_SCRIPT_CODES = ("Zyyy", "Zinh", "Zzzz")


def token_category(surface: bytes, special: bool, byte_fallback: bool, starts_word: bool) -> str:
    """The category of one token (see docs/TOKENIZER_EVAL.md for the rules)."""
    if special:
        return "control"
    if byte_fallback:
        return "byte_fallback"
    try:
        text = surface.decode("utf-8")
    except UnicodeDecodeError:
        return "byte_fallback"  # a byte-level token holding part of a character
    if any(unicodedata.category(character)[0] == "C" and not character.isspace() for character in text):
        return "control"
    if len(text) == 1:
        return "single_character"
    if text.isspace():
        return "whitespace"
    if not any(unicodedata.category(character)[0] in "LM" for character in text):
        return "digits_punctuation"
    return "word_initial" if starts_word else "word_internal"


@functools.lru_cache(maxsize=1 << 16)
def character_script(character: str) -> str:
    return script_data.script(character)


def token_script(surface: bytes, category: str) -> str:
    """The Unicode script of a token's letters: one script's name, Mixed, Common (no letters), Bytes or Special."""
    if category == "control":
        return SPECIAL_SCRIPT
    if category == "byte_fallback":
        return BYTES_SCRIPT
    codes = {character_script(character) for character in surface.decode("utf-8")} - set(SHARED_SCRIPT_CODES)
    if not codes:
        return COMMON_SCRIPT
    if len(codes) > 1:
        return MIXED_SCRIPT
    return script_data.script_name(codes.pop())


def analyse_vocabulary(vocabulary: TokenVocabulary) -> dict[str, Any]:
    """Token counts per category and per script over every defined id."""
    categories: Counter[str] = Counter()
    scripts: Counter[str] = Counter()
    for index, surface in enumerate(vocabulary.surfaces):
        if surface is None:
            continue
        category = token_category(surface, bool(vocabulary.special[index]), bool(vocabulary.byte_fallback[index]),
                                  bool(vocabulary.starts_word[index]))
        categories[category] += 1
        scripts[token_script(surface, category)] += 1
    return {"tokens": sum(categories.values()),
            "categories": {name: categories[name] for name in CATEGORIES},
            "scripts": dict(scripts.most_common())}


def core_words(sample: CorpusSample, languages: list[str], per_language: int) -> dict[str, list[tuple[str, int]]]:
    """The core set: the `per_language` most frequent words of each language group in the sample, with their counts."""
    counters: dict[str, Counter[str]] = {}
    for text, spans, language in zip(sample.texts, sample.words, languages):
        if language == OTHER:
            continue
        counter = counters.setdefault(language, Counter())
        counter.update(text[start:end] for start, end in spans.tolist())
    return {language: counter.most_common(per_language) for language, counter in sorted(counters.items())}


def core_coverage(tokenizer: EvalTokenizer, core: dict[str, list[tuple[str, int]]]) -> dict[str, dict[str, Any]]:
    """Per language: the share of core words that are one token, alone or after a space, by type and by occurrence."""
    result = {}
    for language, entries in core.items():
        if not entries:
            continue
        words = [word for word, _ in entries]
        alone = tokenizer.count_tokens(words)
        after_space = tokenizer.count_tokens([" " + word for word in words])
        single = [bool(a == 1 or b == 1) for a, b in zip(alone.tolist(), after_space.tolist())]
        occurrences = sum(count for _, count in entries)
        result[language] = {
            "core_words": len(words),
            "single_token_share": sum(single) / len(words),
            "single_token_share_by_occurrence": sum(count for (_, count), hit in zip(entries, single) if hit) / occurrences,
        }
    return result
