"""Reading YAML config files: safely (no tags that build objects), strictly (a key given twice is an
error, not a silent last-one-wins), and with every problem as one line naming the file, line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigFileError(ValueError):
    """A config file cannot be read or validated; the message is one line naming the file."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys in any mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path, error: type[Exception] = ConfigFileError) -> Any:
    """The data in a YAML file; a missing file, a syntax error, a tag or a duplicate key is `error`, one line."""
    path = Path(path)
    try:
        return yaml.load(path.read_text(), Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as problem:
        raise error(f"{path}: cannot read ({getattr(problem, 'strerror', None) or problem})") from None
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark else ""
        what = getattr(problem, "problem", None) or str(problem).splitlines()[0]
        raise error(f"{path}: {line}not valid YAML ({what})") from None


def describe_validation_error(error: ValidationError, prefix: tuple = ()) -> str:
    """'field.path: message' for the first problem pydantic found."""
    first = error.errors()[0]
    location = ".".join(str(part) for part in (*prefix, *first["loc"])) or "(top level)"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    elif "input" in first and first["type"] != "missing" and not isinstance(first["input"], dict | list):
        message = f"{message}, got {first['input']!r}"
    return f"{location}: {message}"


def validated_yaml(path: str | Path, model: type[ModelT], error: type[Exception] = ConfigFileError) -> ModelT:
    """A YAML file validated into `model`; any problem is `error` with one line naming the file and field."""
    raw = load_yaml(path, error)
    try:
        return model.model_validate(raw)
    except ValidationError as problem:
        raise error(f"{path}: {describe_validation_error(problem)}") from None
