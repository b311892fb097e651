"""The Gopher, C4 and FineWeb heuristic filters: every rule at its threshold, languages, ledgers, line removal."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gristmill.stages.filters.c4_filter  # noqa: F401  (registers the stages, as stages/__init__.py will)
import gristmill.stages.filters.fineweb_filter  # noqa: F401
import gristmill.stages.filters.gopher_quality  # noqa: F401
import gristmill.stages.filters.gopher_repetition  # noqa: F401
from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA
from gristmill.pipeline.engine.executors import InProcessExecutor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.stages.filters import text_stats
from gristmill.stages.filters.c4_filter import C4Filter, C4FilterConfig
from gristmill.stages.filters.fineweb_filter import FineWebFilter, FineWebFilterConfig
from gristmill.stages.filters.gopher_quality import GopherQuality, GopherQualityConfig
from gristmill.stages.filters.gopher_repetition import GopherRepetition, GopherRepetitionConfig


def batch_of(texts: list[str | None], langs: list[str | None] | None = None) -> pa.RecordBatch:
    langs = langs or [None] * len(texts)
    rows = [{"id": f"d{i}", "text": text, "lang": lang} for i, (text, lang) in enumerate(zip(texts, langs))]
    return pa.RecordBatch.from_pylist(rows, schema=DOCUMENT_SCHEMA)


Verdict = tuple[str | None, str | None]


def verdicts(stage, texts: list[str | None], langs: list[str | None] | None = None) -> list[Verdict]:
    """(reason, detail) per text, (None, None) where kept."""
    result = stage.process(batch_of(texts, langs))
    rejected = {row["id"]: (row["reason"], row["detail"]) for row in result.rejected.to_pylist()}
    return [rejected.get(f"d{i}", (None, None)) for i in range(len(texts))]


def reasons(stage, texts: list[str | None], langs: list[str | None] | None = None) -> list[str | None]:
    return [reason for reason, _ in verdicts(stage, texts, langs)]


def number(value: float) -> str:
    """How rejection details print a measure: at most four decimals, no trailing zeros."""
    return f"{value:.4f}".rstrip("0").rstrip(".")


def unique_words(count: int, prefix: str) -> list[str]:
    """Distinct six-letter words that share nothing with other prefixes."""
    letters = "bcdfghjklmnpqrstvwz"
    tails = itertools.islice(itertools.product(letters, repeat=6 - len(prefix)), count)
    return [prefix + "".join(tail) for tail in tails]


# ---------------------------------------------------------------------------------------------------
# Words: the spaCy tokenisation datatrove uses, checked against spaCy by hand.

@pytest.mark.parametrize(("text", "words"), [
    ("Hello world.", ["Hello", "world", "."]),
    ("I don't know.", ["I", "do", "n't", "know", "."]),
    ("U.S. NASA. Smith.", ["U.S.", "NASA", ".", "Smith", "."]),
    ("e.g., (see os.path.join).", ["e.g.", ",", "(", "see", "os.path.join", ")", "."]),
    ("well-known state-of-the-art", ["well", "-", "known", "state", "-", "of", "-", "the", "-", "art"]),
    ("$5 50% 10km +5 +a", ["$", "5", "50", "%", "10", "km", "+5", "+", "a"]),
    ("C++ and/or w/o :)", ["C++", "and/or", "w/o", ":)"]),
    ("f(x): a[1:]", ["f(x", "):", "a[1", ":]"]),
    ("cannot gonna dont id its well", ["can", "not", "gon", "na", "do", "nt", "i", "d", "its", "well"]),
    ("I'm we'll It's John's users'", ["I", "'m", "we", "'ll", "It", "'s", "John", "'s", "users", "'"]),
    ("DON'T I'M", ["DON'T", "I'M"]),
    ("https://x.com/a. foo@bar.com.", ["https://x.com/a", ".", "foo@bar.com", "."]),
    ("A. b. Mr. Smith.", ["A.", "b.", "Mr.", "Smith", "."]),
    ("ok.Then 1,000 a,b x=y 2-3", ["ok", ".", "Then", "1,000", "a", ",", "b", "x", "=", "y", "2", "-", "3"]),
    ("...and so…", ["...", "and", "so", "…"]),
    ("It was 15 °C. Then", ["It", "was", "15", "°", "C", ".", "Then"]),
    ('"Quoted," he said.', ['"', "Quoted", ",", '"', "he", "said", "."]),
    ("**kwargs __init__ #tag", ["*", "*", "kwargs", "_", "_", "init", "_", "_", "#", "tag"]),
    ("Cost: US$10 3pm 13pm", ["Cost", ":", "US$", "10", "3", "pm", "13pm"]),
    ("  \n\t ", []),
])
def test_words_split_as_spacy_does(text: str, words: list[str]) -> None:
    assert text_stats.split_words(pa.array([text])).values.to_pylist() == words


def test_words_keep_their_rows_and_order() -> None:
    words = text_stats.split_words(pa.array(["bee, ant.", None, "", "c"]))
    assert words.values.to_pylist() == ["bee", ",", "ant", ".", "c"]
    assert words.rows.tolist() == [0, 0, 0, 0, 3]
    assert words.count().tolist() == [4, 0, 0, 1]


@pytest.mark.parametrize(("line", "sentences"), [
    ('Hello world. This is Mr. Smith. Yes! No? e.g. this. "Quoted." Next one.', 7),
    ("One. Two. Three", 3),
    ("A sentence without end", 1),
    ("Wait... what? Really!!", 2),
    ("", 0),
])
def test_sentences_counted_as_spacy_sentencizer(line: str, sentences: int) -> None:
    assert text_stats.count_sentences(pa.array([line])).tolist() == [sentences]


def test_lines_split_like_python_splitlines() -> None:
    texts = ["a\nb\r\nc\rd\x0be\u2028f", "a\n", "", "\n\n", "x"]
    lines = text_stats.split_lines(pa.array(texts))
    assert lines.values.to_pylist() == [line for text in texts for line in text.splitlines()]
    assert text_stats.count_lines(pa.array(texts)).tolist() == [len(t.splitlines()) for t in texts]


# ---------------------------------------------------------------------------------------------------
# Repetition helpers against plain-Python versions of datatrove's definitions.

def reference_top_ngram(words: list[str], n: int) -> int:
    grams = [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0
    gram, count = Counter(grams).most_common(1)[0]
    return len(gram) * count


def reference_duplicated(words: list[str], n: int) -> int:
    seen, repeated, index = set(), 0, 0
    while index < len(words) - n + 1:
        gram = "".join(words[index:index + n])
        if gram in seen:
            repeated += len(gram)
            index += n
        else:
            seen.add(gram)
            index += 1
    return repeated


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["a", "b", "c"]), max_size=40), min_size=1, max_size=8))
def test_ngram_measures_match_the_definitions(documents: list[list[str]]) -> None:
    words = text_stats.split_words(pa.array([" ".join(document) for document in documents]))
    wanted = np.ones(len(documents), dtype=bool)
    for ngrams in text_stats.iter_ngrams(words, range(1, 11)):
        top = text_stats.top_ngram_characters(ngrams, words)
        repeated = text_stats.duplicated_ngram_characters(ngrams, words, wanted)
        for row, document in enumerate(documents):
            assert top[row] == reference_top_ngram(document, ngrams.n)
            assert repeated[row] == reference_duplicated(document, ngrams.n)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="ab\n", max_size=20), min_size=1, max_size=6))
def test_repeated_lines_match_find_duplicates(texts: list[str]) -> None:
    lines = text_stats.split_on(pa.array(texts), r"\n+")
    repeated = text_stats.repeated(lines)
    for row, text in enumerate(texts):
        pieces = re.split(r"\n+", text)
        expected = [piece in pieces[:index] for index, piece in enumerate(pieces)]
        assert repeated[lines.rows == row].tolist() == expected


# ---------------------------------------------------------------------------------------------------
# Gopher quality: each rule, one document just failing it and one just passing (and kept).

GOPHER_PROSE = "the miller and his daughter carried grain from the river to the market with care".split()
NO_STOP_WORDS = "miller daughter carried grain from river market care".split()


def prose(count: int, vocabulary: list[str] = GOPHER_PROSE) -> str:
    return " ".join(vocabulary[i % len(vocabulary)] for i in range(count))


def lines_of(count: int, start: str = "", end: str = "") -> list[str]:
    return [start + prose(6) + end for _ in range(count)]


GOPHER_QUALITY_CASES = [
    # rule, failing text, its detail, passing text
    ("min_doc_words", prose(49) + ".", "words=49 < 50", prose(50) + "."),
    ("max_doc_words", prose(100_001), "words=100001 > 100000", prose(100_000)),
    # 26 x 2 letters + 24 x 4 letters = 148 over 50 words; 25 + 25 gives exactly 3.
    ("min_avg_word_length", "to " * 26 + "have " * 24, "avg_word_length=2.96 < 3", "to " * 25 + "have " * 25),
    # "the" and "and" (6 letters) plus 48 long words: 501 letters over 50 words, or exactly 500.
    ("max_avg_word_length", "the and " + " ".join(["k" * 11] * 15 + ["k" * 10] * 33), "avg_word_length=10.02 > 10",
     "the and " + " ".join(["k" * 11] * 14 + ["k" * 10] * 34)),
    # '#' per word, the '#' themselves counted as words: 7 / 61, or exactly 6 / 60.
    ("max_hash_word_ratio", prose(54) + " #" * 7, "hash_word_ratio=0.1148 > 0.1", prose(54) + " #" * 6),
    ("max_ellipsis_word_ratio", prose(27) + " ..." * 7 + " " + prose(27), "ellipsis_word_ratio=0.1148 > 0.1",
     prose(27) + " ..." * 6 + " " + prose(27)),
    ("max_bullet_lines_ratio", "\n".join(lines_of(10, start="- ")), "bullet_lines_ratio=1 > 0.9",
     "\n".join(lines_of(9, start="• ") + lines_of(1))),
    ("max_ellipsis_lines_ratio", "\n".join(lines_of(4, end="...") + lines_of(6)), "ellipsis_lines_ratio=0.4 > 0.3",
     "\n".join(lines_of(3, end="…") + lines_of(7))),
    # Words holding a letter, over all words: 48 / 61, or exactly 48 / 60.
    ("min_alpha_words_ratio", prose(48) + " 1999" * 13, "alpha_words_ratio=0.7869 < 0.8", prose(48) + " 1999" * 12),
    # Stop words are matched case-sensitively, as datatrove does: "The" and "And" do not count.
    ("min_stop_words", prose(50, NO_STOP_WORDS) + " The And the", "stop_words=1 < 2",
     prose(50, NO_STOP_WORDS) + " the and"),
]


@pytest.mark.parametrize(("rule", "failing", "detail", "passing"), GOPHER_QUALITY_CASES,
                         ids=[case[0] for case in GOPHER_QUALITY_CASES])
def test_gopher_quality_rule_at_its_threshold(rule: str, failing: str, detail: str, passing: str) -> None:
    stage = GopherQuality(GopherQualityConfig())
    assert verdicts(stage, [failing, passing]) == [(f"gopher_quality:{rule}", detail), (None, None)]


def test_gopher_quality_thresholds_are_configurable() -> None:
    short = prose(20) + "."
    assert reasons(GopherQuality(GopherQualityConfig()), [short]) == ["gopher_quality:min_doc_words"]
    assert reasons(GopherQuality(GopherQualityConfig(min_doc_words=20)), [short]) == [None]
    assert reasons(GopherQuality(GopherQualityConfig(min_doc_words=None)), [short]) == [None]
    hashes = prose(54) + " #" * 7
    assert reasons(GopherQuality(GopherQualityConfig(max_symbol_word_ratio=0.2)), [hashes]) == [None]
    with pytest.raises(ValueError, match="max_doc_words must be at least min_doc_words"):
        GopherQualityConfig(min_doc_words=10, max_doc_words=5)
    with pytest.raises(ValueError):
        GopherQualityConfig(max_bullet_lines_ratio=1.5)
    with pytest.raises(ValueError):
        GopherQualityConfig(max_words=3)


GERMAN = ("Der Müller und seine Tochter brachten das Korn von dem Fluss zu dem Markt, weil die Leute im Dorf "
          "auf frisches Brot warteten. Die Mühle stand seit vielen Jahren an dem Ufer und mahlte für die "
          "Bauern der ganzen Gegend, auch wenn das Wasser im Sommer knapp war.")
CHINESE = "磨坊主和他的女儿把粮食从河边运到市场。村里的人们都在等待新鲜的面包。这座磨坊已经在河岸上矗立了很多年。"


def test_gopher_quality_uses_each_language_its_own_stop_words() -> None:
    stage = GopherQuality(GopherQualityConfig())
    # No English stop word at all: rejected as English (also when the language is unknown), kept as German.
    assert reasons(stage, [GERMAN, GERMAN, GERMAN, GERMAN], ["en", None, "de", "de-AT"]) == [
        "gopher_quality:min_stop_words", "gopher_quality:min_stop_words", None, None]
    assert reasons(GopherQuality(GopherQualityConfig(default_language="de")), [GERMAN]) == [None]
    # A list from the config replaces the built-in one; languages without a list skip the rule.
    custom = GopherQuality(GopherQualityConfig(stop_words='{"de": ["oder", "aber"]}'))  # as the CLI passes it
    assert reasons(custom, [GERMAN, GERMAN], ["de", "xx"]) == ["gopher_quality:min_stop_words", None]


def test_gopher_quality_skips_word_rules_for_languages_without_spaces() -> None:
    stage = GopherQuality(GopherQualityConfig())
    assert reasons(stage, [CHINESE, CHINESE], ["en", "zh"]) == ["gopher_quality:min_doc_words", None]
    # Line rules still apply to them.
    bullets = "\n".join("- " + CHINESE for _ in range(10))
    assert reasons(stage, [bullets], ["zh"]) == ["gopher_quality:max_bullet_lines_ratio"]


# ---------------------------------------------------------------------------------------------------
# Gopher repetition.

SENTENCES = [
    "Millers once ground wheat beside fast rivers using heavy stones.",
    "Farmers hauled sacks by cart along muddy lanes before sunrise.",
    "Bakers waited impatiently because fresh bread sold quickly each morning.",
    "Water wheels turned gears that drove grinding machinery indoors.",
    "Flour dust drifted through sunbeams inside dim wooden buildings.",
    "Apprentices learned maintenance, balancing stones and dressing furrows.",
    "Villages depended heavily upon reliable harvests every autumn season.",
]
REPETITION_RULES = ["empty", "dup_para_frac", "dup_para_char_frac", "dup_line_frac", "dup_line_char_frac",
                    "top_2_gram_char_frac", "top_3_gram_char_frac", "top_4_gram_char_frac",
                    *[f"dup_{n}_gram_char_frac" for n in range(5, 11)]]


def interleave(units: list[str], repeated: str, times: int) -> list[str]:
    mixed = []
    for index, unit in enumerate(units):
        mixed.append(unit)
        if index < times:
            mixed.append(repeated)
    return mixed + [repeated] * (times - len(units))


def with_phrase(phrase: str, fillers_per_phrase: int, phrases: int = 10) -> str:
    """`phrases` times: fresh filler words, then the phrase; only the phrase's n-grams repeat."""
    fillers = iter(unique_words(fillers_per_phrase * phrases, "f"))
    return " ".join(" ".join([*itertools.islice(fillers, fillers_per_phrase), phrase]) for _ in range(phrases))


def with_repeated_spans(n: int, fillers: int, spans: int = 4) -> str:
    """Four spans of n distinct words, each written twice among distinct filler words."""
    span_words, filler_words = iter(unique_words(spans * n, "s")), iter(unique_words(fillers, "f"))
    spans_text = [" ".join(itertools.islice(span_words, n)) for _ in range(spans)]
    per_gap = fillers // (2 * spans + 1)
    parts = [" ".join(itertools.islice(filler_words, per_gap))]
    for span in spans_text * 2:
        parts += [span, " ".join(itertools.islice(filler_words, per_gap))]
    return " ".join(part for part in parts + [" ".join(filler_words)] if part)


def repetition_case(rule: str) -> tuple[str, str, str]:
    """(failing text, its detail, passing text) for a rule; the shares are computed here by hand."""
    if rule in ("dup_para_frac", "dup_line_frac"):
        separator = "\n\n" if rule == "dup_para_frac" else "\n"
        failing = separator.join(interleave(SENTENCES[:6], "Yes.", 5))  # 4 repeats in 11 units
        return failing, f"{rule}=0.3636 > 0.3", separator.join(interleave(SENTENCES[:6], "Yes.", 4))  # 3 in 10
    if rule in ("dup_para_char_frac", "dup_line_char_frac"):
        separator = "\n\n" if rule == "dup_para_char_frac" else "\n"
        long_unit = " ".join(SENTENCES[4:7])
        failing = separator.join(SENTENCES[:4] + [long_unit, long_unit])
        share = len(long_unit) / len(failing)
        return failing, f"{rule}={number(share)} > 0.2", separator.join(SENTENCES[:4] + [SENTENCES[4]] * 2)
    if rule.startswith("top_"):
        # One phrase ten times among fresh fillers: share = 10 x len(phrase) / len(text).
        phrase, fillers, limit = {2: ("hello world", 6, 0.2), 3: ("hello big world", 9, 0.18),
                                  4: ("one fine sunny day", 13, 0.16)}[int(rule[4])]
        failing = with_phrase(phrase, fillers)
        return failing, f"{rule}={number(10 * len(phrase) / len(failing))} > {limit}", with_phrase(phrase, fillers + 1)
    n = int(rule.split("_")[1])
    limit = getattr(GopherRepetitionConfig(), rule)
    # The second copy of each span counts its letters: 4 x n x 6 of len(text); the most fillers that still fail.
    fillers = next(f for f in itertools.count(0) if 24 * n / len(with_repeated_spans(n, f + 1)) <= limit)
    failing = with_repeated_spans(n, fillers)
    return failing, f"{rule}={number(24 * n / len(failing))} > {limit:g}", with_repeated_spans(n, fillers + 1)


@pytest.mark.parametrize("rule", REPETITION_RULES[1:])
def test_gopher_repetition_rule_at_its_threshold(rule: str) -> None:
    failing, detail, passing = repetition_case(rule)
    failed, passed = verdicts(GopherRepetition(GopherRepetitionConfig()), [failing, passing])
    assert failed == (f"gopher_repetition:{rule}", detail)
    # Just below a character share, the repeated text may still fail a later n-gram rule, never this one.
    later = [f"gopher_repetition:{name}" for name in REPETITION_RULES[REPETITION_RULES.index(rule) + 1:]]
    assert passed[0] is None or passed[0] in later


def test_gopher_repetition_rejects_empty_text_and_counts_blank_lines() -> None:
    stage = GopherRepetition(GopherRepetitionConfig())
    assert verdicts(stage, ["", None, "  "]) == [("gopher_repetition:empty", "empty text")] * 2 + [(None, None)]
    # datatrove splits lines on "\n+" without stripping: leading and trailing newlines make two empty lines.
    assert reasons(stage, ["\nA single line of text, nothing repeated here.\n"]) == ["gopher_repetition:dup_line_frac"]


def test_gopher_repetition_thresholds_are_configurable() -> None:
    failing, _, _ = repetition_case("top_2_gram_char_frac")
    assert reasons(GopherRepetition(GopherRepetitionConfig(top_2_gram_char_frac=0.25)), [failing]) == [None]
    spans, _, _ = repetition_case("dup_7_gram_char_frac")
    assert reasons(GopherRepetition(GopherRepetitionConfig(dup_7_gram_char_frac=None)), [spans]) == [None]
    stricter = GopherRepetition(GopherRepetitionConfig(dup_5_gram_char_frac=0.05))
    assert reasons(stricter, [spans]) == ["gopher_repetition:dup_5_gram_char_frac"]
    with pytest.raises(ValueError):
        GopherRepetitionConfig(dup_line_frac=1.2)


def test_gopher_repetition_skips_ngram_rules_for_languages_without_spaces() -> None:
    repeated = "。".join([CHINESE[:12]] * 6)  # one line: only n-gram rules could see the repetition
    stage = GopherRepetition(GopherRepetitionConfig())
    english = " ".join(["the same few words again"] * 6)
    assert reasons(stage, [english, repeated], ["en", "zh"]) == ["gopher_repetition:top_2_gram_char_frac", None]


# ---------------------------------------------------------------------------------------------------
# C4: line removal and page rules.

C4_PAGE = [
    "The mill stood by the river for two hundred years.",
    "Farmers brought their grain there every autumn.",
    "The miller ground it between two heavy stones.",
    "Bakers in the town bought most of the flour.",
    "Nobody remembers when the wheel last turned.",
]


def c4_result(lines: list[str], config: C4FilterConfig | None = None, lang: str | None = None) -> tuple:
    result = C4Filter(config or C4FilterConfig()).process(batch_of(["\n".join(lines)], [lang]))
    if result.rejected.num_rows:
        row = result.rejected.to_pylist()[0]
        return row["reason"], row["detail"]
    row = result.kept.to_pylist()[0]
    return row["text"], row["c4_removed_lines"]


REMOVED_NONE = dict.fromkeys(("too_long_word", "no_terminal_punct", "too_few_words", "javascript", "policy"), 0)


@pytest.mark.parametrize(("line", "rule"), [
    ("word " * 5 + "x" * 1000 + ".", "too_long_word"),  # a word of 1001 characters, period included
    ("A line that simply stops", "no_terminal_punct"),
    ("A line that trails off...", "no_terminal_punct"),
    ("A line with a citation. [1]", "no_terminal_punct"),  # stripped before citations go: it ends in a space
    ("Too short.", "too_few_words"),
    ("Please enable JavaScript to continue.", "javascript"),
    ("Read our privacy policy today.", "policy"),
    ("This site uses cookies, as usual.", "policy"),
    ("See our Terms of Use for details.", "policy"),
])
def test_c4_removes_the_line_and_counts_why(line: str, rule: str) -> None:
    text, removed = c4_result(C4_PAGE[:3] + [line] + C4_PAGE[3:])
    assert text == "\n".join(C4_PAGE)
    assert removed == {**REMOVED_NONE, rule: 1}


@pytest.mark.parametrize("line", [
    "word " * 5 + "x" * 999 + ".",  # a word of 1000 characters
    'He said it "plainly."',
    "It ends with a quote'",
    "Three words here.",
    "Who knows that?",
    "What a mill!",
])
def test_c4_keeps_a_line_that_just_passes(line: str) -> None:
    text, removed = c4_result(C4_PAGE + [line])
    assert text == "\n".join(C4_PAGE + [line]) and removed == REMOVED_NONE


def test_c4_removes_citations_from_kept_lines_and_strips_them() -> None:
    text, removed = c4_result(["  The mill[1] was rebuilt in 1820.[citation needed]  "] + C4_PAGE[1:] + ["[edit]"])
    assert text == "The mill was rebuilt in 1820.\n" + "\n".join(C4_PAGE[1:])
    assert removed == {**REMOVED_NONE, "no_terminal_punct": 1}


@pytest.mark.parametrize(("extra", "reason", "detail"), [
    ("Lorem ipsum dolor sit amet.", "c4:lorem_ipsum", "line 4 has 'lorem ipsum'"),
    ("The function returns {} here.", "c4:curly_bracket", "line 4 has '{'"),
])
def test_c4_rejects_pages_with_lorem_ipsum_or_curly_brackets(extra: str, reason: str, detail: str) -> None:
    assert c4_result(C4_PAGE[:3] + [extra] + C4_PAGE[3:]) == (reason, detail)


def test_c4_page_rules_only_see_lines_that_survive_earlier_line_rules() -> None:
    # Neither line reaches the page rules: one lacks terminal punctuation, the other mentions javascript first.
    text, removed = c4_result(C4_PAGE + ["function f() { return 1 }", "Javascript code uses { braces }."])
    assert text == "\n".join(C4_PAGE)
    assert removed == {**REMOVED_NONE, "no_terminal_punct": 1, "javascript": 1}


def test_c4_needs_five_sentences_in_kept_lines() -> None:
    assert c4_result(C4_PAGE[:4] + ["No punctuation here at all"]) == ("c4:min_num_sentences", "sentences=4 < 5")
    one_line = "One two three. Four five six. Seven eight nine. Ten eleven twelve. Done now here."
    assert c4_result([one_line])[1] == REMOVED_NONE
    assert c4_result(C4_PAGE[:4], C4FilterConfig(min_num_sentences=4))[1] == REMOVED_NONE
    assert c4_result([], C4FilterConfig(min_num_sentences=None)) == ("", REMOVED_NONE)


def test_c4_rules_can_be_switched_off() -> None:
    config = C4FilterConfig(filter_no_terminal_punct=False, min_words_per_line=None, filter_javascript=False,
                            filter_policy=False, filter_lorem_ipsum=False, filter_curly_bracket=False,
                            max_word_length=None, remove_citations=False)
    lines = C4_PAGE + ["No stop", "Hi.", "Javascript { and } lorem ipsum [1] privacy policy.", "x" * 2000]
    assert c4_result(lines, config) == ("\n".join(lines), REMOVED_NONE)


def test_c4_languages_without_spaces_keep_lines_of_one_word() -> None:
    lines = chinese_lines()[:3]  # six sentences, each line a single "word"
    assert c4_result(lines, lang="zh") == ("\n".join(lines), REMOVED_NONE)
    assert c4_result(lines, lang="en") == ("c4:min_num_sentences", "sentences=0 < 5")


def test_c4_output_schema_adds_the_removed_line_counts() -> None:
    stage = C4Filter(C4FilterConfig())
    result = stage.process(batch_of(["\n".join(C4_PAGE), "short"]))
    assert result.kept.schema.equals(stage.output_schema(DOCUMENT_SCHEMA))
    assert result.kept.num_rows == 1 and result.rejected.column("id").to_pylist() == ["d1"]


# ---------------------------------------------------------------------------------------------------
# FineWeb.

def long_lines(count: int, end: str = "", prefix: str = "l") -> list[str]:
    """Distinct lines of six words (distinct for each prefix), all longer than 30 characters."""
    words = iter(unique_words(6 * count, prefix))
    return [" ".join(itertools.islice(words, 6)) + end for _ in range(count)]


def fineweb_case(rule: str) -> tuple[str, str, str]:
    if rule == "min_line_punct_ratio":
        # 2 of 25 lines end in punctuation, or exactly 3 of 25 (0.12).
        return ("\n".join(long_lines(2, ".", "p") + long_lines(23)), "line_punct_ratio=0.08 < 0.12",
                "\n".join(long_lines(3, "!", "p") + long_lines(22)))
    if rule == "max_short_line_ratio":
        thirty = "Thirty characters exactly, ok."
        assert len(thirty) == 30
        long_line = long_lines(1, ".")[0]
        return ("\n".join([thirty, "Short one.", "Another short one.", long_line]), "short_line_ratio=0.75 > 0.67",
                "\n".join([thirty, "Short one.", long_line]))
    if rule == "max_char_dup_ratio":
        unique = long_lines(20, ".")
        characters = sum(map(len, unique))
        # The repeated line adds its length twice to the characters and once to the repeated ones.
        longest = max(length for length in range(1, 200) if length / (characters + 2 * length) <= 0.01)
        line = ("r" * 200)[: longest - 1] + "."
        failing_line = ("r" * 200)[:longest] + "."
        share = (longest + 1) / (characters + 2 * longest + 2)
        return ("\n".join(unique + [failing_line, failing_line]), f"char_dup_ratio={number(share)} > 0.01",
                "\n".join(unique + [line, line]))
    # Two long words and a period a line: 10 breaks in 33 words, or exactly 9 in 30.
    pairs = zip(unique_words(11, "aaaa"), unique_words(11, "bbbb"))
    lines = [f"{first}extraordinarily {second}incomprehensibly." for first, second in pairs]
    return "\n".join(lines), "new_line_ratio=0.303 > 0.3", "\n".join(lines[:10])


@pytest.mark.parametrize("rule", ["min_line_punct_ratio", "max_short_line_ratio", "max_char_dup_ratio",
                                  "max_new_line_ratio"])
def test_fineweb_rule_at_its_threshold(rule: str) -> None:
    failing, detail, passing = fineweb_case(rule)
    stage = FineWebFilter(FineWebFilterConfig())
    assert verdicts(stage, [failing, passing]) == [(f"fineweb:{rule}", detail), (None, None)]


def test_fineweb_rejects_pages_without_a_nonblank_line() -> None:
    stage = FineWebFilter(FineWebFilterConfig())
    assert verdicts(stage, ["", " \n\t\n", None]) == [("fineweb:empty", "no non-blank line")] * 3


def test_fineweb_thresholds_are_configurable() -> None:
    no_punctuation = "\n".join(long_lines(25))
    assert reasons(FineWebFilter(FineWebFilterConfig()), [no_punctuation]) == ["fineweb:min_line_punct_ratio"]
    assert reasons(FineWebFilter(FineWebFilterConfig(line_punct_exclude_zero=True)), [no_punctuation]) == [None]
    failing, _, _ = fineweb_case("max_new_line_ratio")
    assert reasons(FineWebFilter(FineWebFilterConfig(max_new_line_ratio=0.5)), [failing]) == [None]
    assert reasons(FineWebFilter(FineWebFilterConfig(max_new_line_ratio=None)), [failing]) == [None]


def chinese_lines() -> list[str]:
    """Six distinct lines of two Chinese sentences each, no spaces anywhere."""
    sentences = [sentence + "。" for sentence in CHINESE.split("。") if sentence]
    return [first + second for first, second in itertools.permutations(sentences, 2)]


def test_fineweb_skips_the_word_rule_for_languages_without_spaces() -> None:
    # Read as English, a line without spaces is two words: far too many line breaks per word.
    text = "\n".join(chinese_lines())
    stage = FineWebFilter(FineWebFilterConfig())
    assert reasons(stage, [text, text], ["en", "zh"]) == ["fineweb:max_new_line_ratio", None]


# ---------------------------------------------------------------------------------------------------
# Every filter, on arbitrary input: nothing lost, nothing raised, every rejection named.

STAGES = [GopherQuality(GopherQualityConfig()), GopherRepetition(GopherRepetitionConfig()),
          C4Filter(C4FilterConfig()), FineWebFilter(FineWebFilterConfig())]
PREFIXES = {"gopher_quality": "gopher_quality:", "gopher_repetition": "gopher_repetition:",
            "c4_filter": "c4:", "fineweb_filter": "fineweb:"}
TEXT = st.one_of(
    st.none(),
    st.lists(st.sampled_from([*"ab .,!?#{-•…'\"\n\r\t。字\u2028\x00", "the", "and", "Mr.", "don't", "lorem ipsum"]),
             max_size=60).map("".join),
    st.lists(st.sampled_from(SENTENCES + C4_PAGE + ["", "Yes.", "- item", "Read more..."]), max_size=12).map("\n".join),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(TEXT, max_size=25),
       langs=st.lists(st.sampled_from([None, "en", "de", "zh", "ja-JP", ""]), max_size=25))
def test_every_filter_conserves_rows_and_names_its_rules(texts: list[str | None], langs: list[str | None]) -> None:
    langs = (langs + [None] * len(texts))[: len(texts)]
    batch = batch_of(texts, langs)
    for stage in STAGES:
        result = stage.process(batch)
        kept, rejected = result.kept.column("id").to_pylist(), result.rejected.column("id").to_pylist()
        assert sorted(kept + rejected) == sorted(batch.column("id").to_pylist())
        assert all(reason.startswith(PREFIXES[stage.name]) for reason in result.rejected.column("reason").to_pylist())
        assert None not in result.rejected.column("detail").to_pylist()
        assert result.kept.schema.equals(stage.output_schema(batch.schema))


def test_filters_run_in_a_graph_and_write_their_ledgers(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lorem = "Lorem ipsum dolor sit amet.\n" + "\n".join(C4_PAGE)
    documents = ["\n".join(C4_PAGE * 3), "\n".join(SENTENCES), lorem, "tiny"]
    with open(corpus / "part0.jsonl", "w") as handle:
        for index, text in enumerate(documents):
            handle.write(json.dumps({"id": f"doc{index}", "text": text}) + "\n")
    graph_path = tmp_path / "graph.yaml"
    graph_path.write_text(
        f"stages:\n  read:\n    stage: read_text\n    params: {{paths: ['{corpus}/*.jsonl']}}\n"
        "  c4:\n    stage: c4_filter\n    input: read\n"
        "  fineweb:\n    stage: fineweb_filter\n    input: c4\n"
    )
    run_graph(load_graph(graph_path, tmp_path / "run"), InProcessExecutor())
    assert Dataset(tmp_path / "run" / "c4").manifest().rejected == {"c4:lorem_ipsum": 1, "c4:min_num_sentences": 1}
    kept = pl.read_parquet(tmp_path / "run" / "c4" / "*.parquet")
    assert kept["id"].to_list() == ["doc0", "doc1"]
    assert kept["c4_removed_lines"].struct.field("no_terminal_punct").to_list() == [0, 0]
    fineweb = Dataset(tmp_path / "run" / "fineweb").manifest()
    assert fineweb.rows_in == 2 and fineweb.rejected == {"fineweb:max_char_dup_ratio": 1}
