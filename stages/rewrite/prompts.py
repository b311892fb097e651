"""Prompt files of the LLM stages: templates that rewrite a text (kinds `text`, `math`, `code`) or grade it (`grade`).

One loader for both, reading `configs/prompts/<id>.yaml` or a user's file safely and checking its placeholders when it
loads, so a broken prompt is one line naming the file before any model is loaded.
"""

from __future__ import annotations

import importlib.resources
import re
import string
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gristmill.pipeline.engine.config_files import load_yaml

PROMPTS_DIR = Path(str(importlib.resources.files("gristmill.configs") / "prompts"))  # shipped in the wheel too
REWRITE_KINDS = ("text", "math", "code")
GRADE_KINDS = ("grade",)
# "Score: 3" at the start of a line (markdown emphasis and quoting tolerated); the last such line counts.
SCORE_LINE = r"(?im)^[ \t*_#>]*score[ \t*_]*:[ \t*_]*(-?\d+(?:\.\d+)?)"


class PromptTemplate(BaseModel):
    """What every prompt file has: an id and version (part of every cache key), an optional system message and
    a user template filled per request."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    version: int = Field(ge=1, description="Bump on any change to the wording: it is part of the cache key.")
    description: str = ""
    system: str | None = None
    user: str
    placeholders: ClassVar[tuple[str, ...]] = ("text", "language")  # the first is required, the rest are optional

    def check_placeholders(self) -> None:
        template = string.Template(self.user)
        if not template.is_valid():
            raise ValueError(f"prompt {self.id}: the user template has a $ that starts no ${{name}}; write $$ for a "
                             "literal dollar sign")
        names = set(template.get_identifiers())
        required, *optional = self.placeholders
        if required not in names or not names <= set(self.placeholders):
            may = f" and may use {', '.join(f'${{{name}}}' for name in optional)}" if optional else " and no other placeholder"
            raise ValueError(f"prompt {self.id}: the user template must use ${{{required}}}{may}, got {sorted(names)}")

    def messages(self, text: str, language: str = "") -> list[dict[str, str]]:
        user = string.Template(self.user).substitute(text=text, language=language)
        return ([{"role": "system", "content": self.system}] if self.system else []) + [{"role": "user", "content": user}]

    @property
    def instructions(self) -> str:
        """The fixed wording of the prompt: to recognise an output that repeats it, and to size what is left for text."""
        return " ".join(filter(None, [self.system, string.Template(self.user).substitute(text=" ", language=" ")]))


class Prompt(PromptTemplate):
    """A rewrite prompt: `${text}` is the chunk and `${language}` the English name of its language."""

    kind: Literal["text", "math", "code"] = "text"
    language: str | None = Field(None, description="Programming language of a code prompt (only python is checked).")

    @model_validator(mode="after")
    def has_text_variable(self) -> Prompt:
        self.check_placeholders()
        return self


class GradePrompt(PromptTemplate):
    """A grading rubric: `${text}` is the document; the answer must carry a score that `answer_pattern` finds."""

    kind: Literal["grade"] = "grade"
    placeholders: ClassVar[tuple[str, ...]] = ("text",)
    score_range: tuple[float, float] = Field(description="Lowest and highest valid score, inclusive.")
    answer_pattern: str = Field(
        SCORE_LINE, description="Regular expression with one group, the score; the last match in the answer counts."
    )

    @model_validator(mode="after")
    def valid_rubric(self) -> GradePrompt:
        self.check_placeholders()
        low, high = self.score_range
        if low >= high:
            raise ValueError(f"prompt {self.id}: score_range must go from low to high, got {list(self.score_range)}")
        try:
            groups = re.compile(self.answer_pattern).groups
        except re.error as error:
            raise ValueError(f"prompt {self.id}: answer_pattern is not a regular expression ({error})") from None
        if groups != 1:
            raise ValueError(f"prompt {self.id}: answer_pattern must have exactly one group, the score; it has {groups}")
        return self

    def parse(self, answer: str) -> tuple[float | None, str | None]:
        """(score, None), or (None, reason) with reason `empty`, `unparsed` or `out_of_range`."""
        if not answer.strip():
            return None, "empty"
        found = None
        for found in re.finditer(self.answer_pattern, answer):
            pass
        if found is None:
            return None, "unparsed"
        try:
            score = float(found.group(1))
        except (TypeError, ValueError):
            return None, "unparsed"
        low, high = self.score_range
        return (score, None) if low <= score <= high else (None, "out_of_range")


def load_prompt(name: str, kinds: tuple[str, ...] | None = None) -> Prompt | GradePrompt:
    """A prompt by id (a file in configs/prompts/) or by path to a YAML file, read safely: a tag, a duplicate key,
    malformed YAML, a bad placeholder or a kind other than `kinds` is one line naming the file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROMPTS_DIR / f"{name}.yaml"
    if not path.is_file():
        library = [prompt for prompt in sorted(PROMPTS_DIR.glob("*.yaml")) if kinds is None or prompt_kind(prompt) in kinds]
        known = ", ".join(prompt.stem for prompt in library)
        raise ValueError(f"prompt {name!r}: no file {path} (prompts in the library: {known})")
    raw = load_yaml(path, ValueError)
    declared = raw.get("kind") if isinstance(raw, dict) else None
    grading = declared == "grade" or (declared is None and kinds == GRADE_KINDS)
    try:
        prompt = (GradePrompt if grading else Prompt).model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            (f"{'.'.join(map(str, problem['loc']))}: " if problem["loc"] else "") + problem["msg"].removeprefix("Value error, ")
            for problem in error.errors()
        )
        raise ValueError(f"prompt file {path}: {problems}") from None
    if kinds is not None and prompt.kind not in kinds:
        raise ValueError(f"prompt file {path}: kind {prompt.kind} does not suit this stage, which takes {', '.join(kinds)}")
    return prompt


def prompt_kind(path: Path) -> str | None:
    """The kind a library prompt file declares (for listing), without validating it."""
    match = re.search(r"(?m)^kind:\s*(\w+)", path.read_text(encoding="utf-8", errors="replace"))
    return match.group(1) if match else "text"
