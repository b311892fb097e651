"""YAML stage graphs: loading, validation before anything runs, and ordering.

A graph names its nodes; each node runs one registered stage with typed params and reads
either external files (source stages, through `params.paths`) or the datasets of other
nodes or existing dataset directories (`input`). Every error is one line naming the file
and the field.

    name: quickstart
    output: runs/quickstart          # default; --output overrides
    stages:
      read:
        stage: read_text
        params: {paths: ["${output}/sample/pages.jsonl"]}
      long_enough:
        stage: length_filter
        input: read
        params: {min_chars: 200}

In params and inputs, `${output}` is the run's output directory and `${config_dir}` the
directory of the YAML file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gristmill.pipeline.engine.config_files import describe_validation_error, load_yaml
from gristmill.pipeline.engine.dataset import MANIFEST_NAME
from gristmill.pipeline.engine.files import Location, as_location
from gristmill.pipeline.engine.plugins import PluginError, import_plugins
from gristmill.pipeline.engine.stage import MapStage, SourceStage, Stage, StageConfig, registered_stages

NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class GraphError(Exception):
    """A graph cannot run; the message is one line naming the file and field."""


class NodeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: str
    input: str | list[str] | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class GraphSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    output: str | None = None
    plugins: list[str] = Field(default_factory=list)
    stages: dict[str, NodeSpec] = Field(min_length=1)


@dataclass(frozen=True)
class Node:
    name: str
    stage: type[Stage]
    config: StageConfig
    inputs: tuple[str, ...]  # node names of this graph, or dataset directories

    @property
    def is_source(self) -> bool:
        return issubclass(self.stage, SourceStage)


@dataclass(frozen=True)
class Graph:
    name: str
    output: Location
    nodes: tuple[Node, ...]  # in a valid execution order
    plugins: tuple[str, ...] = ()

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)


def format_validation_error(where: str, error: ValidationError, prefix: tuple = ()) -> GraphError:
    return GraphError(f"{where}: {describe_validation_error(error, prefix)}")


def load_graph(path: str | Path, output: str | Path | None = None, plugins: tuple[str, ...] = ()) -> Graph:
    """Read and validate a YAML graph; raises GraphError naming the file and field. `plugins` (the command line's)
    are imported before the graph's own and travel with its tasks like them."""
    path = Path(path)
    where = str(path)
    raw = load_yaml(path, GraphError)
    if not isinstance(raw, dict):
        raise GraphError(f"{where}: expected a mapping with a 'stages' field")
    try:
        spec = GraphSpec.model_validate(raw)
        spec.plugins = list(dict.fromkeys([*plugins, *spec.plugins]))
    except ValidationError as error:
        raise format_validation_error(where, error) from None
    output_dir = as_location(output or spec.output or Path("runs") / (spec.name or path.stem))
    return build_graph(spec, where, output_dir, config_dir=path.parent)


def expand_variables(value: Any, variables: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, replacement in variables.items():
            value = value.replace("${" + key + "}", replacement)
        return value
    if isinstance(value, list):
        return [expand_variables(item, variables) for item in value]
    if isinstance(value, dict):
        return {key: expand_variables(item, variables) for key, item in value.items()}
    return value


def build_graph(spec: GraphSpec, where: str, output: Location, config_dir: Path = Path(".")) -> Graph:
    try:
        import_plugins(spec.plugins)
    except PluginError as error:
        raise GraphError(f"{where}: plugins: {error}") from None
    try:
        known = registered_stages()
    except PluginError as error:
        raise GraphError(f"{where}: {error}") from None
    variables = {"output": str(output), "config_dir": str(config_dir)}
    nodes: dict[str, Node] = {}
    for name, node_spec in spec.stages.items():
        field = f"stages.{name}"
        if not NODE_NAME.match(name):
            raise GraphError(f"{where}: {field}: node names start with a letter or digit and may use letters, "
                             "digits, '_', '-' and '.' (names starting with '_' or '.' are Gristmill's own files)")
        if node_spec.stage not in known:
            raise GraphError(
                f"{where}: {field}.stage: unknown stage {node_spec.stage!r} (known: {', '.join(known)})"
            )
        stage = known[node_spec.stage]
        try:
            config = stage.Config.model_validate(expand_variables(node_spec.params, variables))
        except ValidationError as error:
            raise format_validation_error(where, error, prefix=(field, "params")) from None
        declared = expand_variables(node_spec.input, variables)
        inputs = declared if isinstance(declared, list) else [declared] * (declared is not None)
        if issubclass(stage, SourceStage) and inputs:
            raise GraphError(f"{where}: {field}.input: source stage {node_spec.stage!r} reads params.paths, not input")
        if issubclass(stage, MapStage) and not inputs:
            raise GraphError(f"{where}: {field}.input: stage {node_spec.stage!r} needs an input")
        nodes[name] = Node(name, stage, config, tuple(inputs))

    for node in nodes.values():
        for upstream in node.inputs:
            if upstream not in nodes and not (as_location(upstream) / MANIFEST_NAME).exists():
                raise GraphError(
                    f"{where}: stages.{node.name}.input: {upstream!r} is neither a stage of this graph "
                    "nor a complete dataset directory"
                )
    return Graph(spec.name or "graph", output, tuple(order_nodes(nodes, where)), tuple(spec.plugins))


def order_nodes(nodes: dict[str, Node], where: str) -> list[Node]:
    """Topological order that keeps declaration order among independent nodes."""
    ordered: list[Node] = []
    placed: set[str] = set()
    remaining = dict(nodes)
    while remaining:
        ready = [
            node
            for node in remaining.values()
            if all(upstream in placed or upstream not in nodes for upstream in node.inputs)
        ]
        if not ready:
            cycle = " -> ".join(remaining)
            raise GraphError(f"{where}: stages: cycle among {cycle}")
        for node in ready:
            ordered.append(node)
            placed.add(node.name)
            del remaining[node.name]
    return ordered
