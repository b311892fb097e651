"""The `gristmill ablate` config: a recipe, the proxy settings, the held-out sets and the variants to compare.

Validated before anything runs, like every graph: each problem is one line naming the file and the field, and
node names are checked against the recipe.
"""

from __future__ import annotations

from pathlib import Path
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gristmill.pipeline.engine.config_files import describe_validation_error, load_yaml
from gristmill.pipeline.engine.graph import GraphError, GraphSpec, NodeSpec, expand_variables
from gristmill.pipeline.engine.stage import SourceStage, registered_stages
from gristmill.pipeline.tokens.mixture import ClusterBalance
from gristmill.trainer.protocol import ProxyProtocol

Batching = Literal["dd", "concat", "best_fit"]


class AblationError(Exception):
    """An ablation cannot run; the message is one line naming the file and field, or the step that failed."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RecipeConfig(Strict):
    graph: str | None = Field(None, description="The recipe's stage graph (YAML), relative to the ablation file.")
    stages: dict[str, NodeSpec] | None = Field(None, description="Or the recipe inline, as a graph's `stages`.")
    plugins: list[str] = Field(default_factory=list, description="Plugin modules of an inline recipe.")
    output: str | None = Field(None, description="Where the recipe runs (default: OUTPUT/recipe); complete nodes "
                                                 "are reused.")
    source: str | None = Field(None, description="The node whose output is the `raw` variant (default: the first "
                                                 "source node).")
    final: str | None = Field(None, description="The node whose output is the curated data (default: the last node).")

    @model_validator(mode="after")
    def one_recipe(self) -> RecipeConfig:
        if (self.graph is None) == (self.stages is None):
            raise ValueError("give the recipe as `graph: PATH` or inline `stages:`, not both and not neither")
        return self


class TokenizerTraining(Strict):
    vocab_size: int = Field(4096, ge=260, description="Vocabulary size, special tokens included.")
    sample_bytes: int = Field(100_000_000, ge=1, description="Text the tokenizer trains on, sampled by seed.")
    seed: int = Field(0, ge=0)


class TokenizerChoice(Strict):
    path: str | None = Field(None, description="A trained tokenizer: a `gristmill tokenizer train` output or a "
                                               "tokenizer.json.")
    train: TokenizerTraining | None = Field(None, description="Or train one on the recipe's final output, the "
                                                              "held-out slice excluded.")

    @model_validator(mode="after")
    def one_tokenizer(self) -> TokenizerChoice:
        if (self.path is None) == (self.train is None):
            raise ValueError("give `path:` or `train:`, not both and not neither")
        return self


class HeldoutSlice(Strict):
    fraction: float = Field(0.05, gt=0, le=0.5, description="Share of the final output's documents held out.")
    max_documents: int = Field(1000, ge=1, description="At most this many documents held out.")
    seed: int = Field(0, ge=0, description="Which documents: those whose seeded id hash is smallest.")


class HeldoutConfig(Strict):
    slice: HeldoutSlice = Field(default_factory=HeldoutSlice)
    sets: dict[str, str] = Field(default_factory=dict, description="Held-out sets NAME: PATH (a Gristmill dataset, "
                                                                   "or JSONL/Parquet/text files read by read_text).")

    @model_validator(mode="after")
    def names_are_distinct(self) -> HeldoutConfig:
        if "slice" in self.sets:
            raise ValueError("sets: the name `slice` is the recipe's held-out slice; choose another")
        return self


class ProxySettings(Strict):
    tokens: int = Field(ge=1, description="Training tokens per run, the same for every variant.")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="Seeds; every variant trains once per seed.")
    model: str = Field("tiny", description="Model size (see `gristmill train --model`).")
    seq_len: int = Field(256, ge=2, description="Sequence length; Dataset Decomposition's longest bucket. A power "
                                                "of two.")
    tokens_per_step: int = Field(8192, ge=1, description="Tokens per optimizer step (a multiple of seq_len).")
    batching: Batching = Field("dd", description="Batching of every variant but the batching family.")
    min_bucket: int = Field(4, ge=0, le=24, description="Dataset Decomposition's shortest bucket, 2^k + 1 tokens.")
    target: str | None = Field(None, description="Held-out set that ranks variants (default: the mean of all).")
    training: dict[str, Any] = Field(default_factory=dict, description="Other TrainConfig settings, shared by all "
                                                                       "runs.")

    @model_validator(mode="after")
    def shapes_fit(self) -> ProxySettings:
        if self.seq_len & (self.seq_len - 1):
            raise ValueError(f"seq_len must be a power of two (Dataset Decomposition buckets), got {self.seq_len}")
        if 1 << self.min_bucket > self.seq_len:
            raise ValueError(f"min_bucket {self.min_bucket} is longer than seq_len {self.seq_len}")
        if self.tokens_per_step % self.seq_len:
            raise ValueError(f"tokens_per_step {self.tokens_per_step} is not a multiple of seq_len {self.seq_len}")
        self.protocol()  # budget and shared settings checked here, once
        return self

    def protocol(self) -> ProxyProtocol:
        shape = {"model": self.model, "seq_len": self.seq_len, "tokens_per_step": self.tokens_per_step}
        if clash := set(shape) & set(self.training):
            raise ValueError(f"training: set {', '.join(sorted(clash))} in proxy, not in proxy.training")
        return ProxyProtocol(tokens=self.tokens, seeds=self.seeds, training={**self.training, **shape})

    @property
    def max_bucket(self) -> int:
        return self.seq_len.bit_length() - 1


class ThresholdFamily(Strict):
    node: str = Field(description="The recipe node whose output holds the scored column.")
    column: str = Field(description="The score column.")
    top_percent: list[float] | None = Field(None, description="Keep the top k% of documents, for each k.")
    thresholds: list[float] | None = Field(None, description="Or keep documents scoring at least each threshold.")

    @model_validator(mode="after")
    def one_list(self) -> ThresholdFamily:
        values = self.top_percent if self.thresholds is None else self.thresholds
        if (self.top_percent is None) == (self.thresholds is None) or not values:
            raise ValueError("give a non-empty `top_percent:` or `thresholds:` list, not both")
        if self.top_percent is not None and not all(0 < value <= 100 for value in self.top_percent):
            raise ValueError(f"top_percent values must be in (0, 100], got {self.top_percent}")
        if len(set(values)) != len(values):
            raise ValueError(f"the values repeat: {values}")
        return self

    @property
    def values(self) -> list[float]:
        return list(self.top_percent if self.top_percent is not None else self.thresholds or [])


class VariantsConfig(Strict):
    raw: bool = Field(True, description="The source stage's output, with no curation.")
    cumulative: list[str] = Field(default_factory=list, description="The output after each named node, in graph "
                                                                    "order.")
    leave_one_out: list[str] = Field(default_factory=list, description="The full recipe without each named node.")
    threshold: dict[str, ThresholdFamily] = Field(default_factory=dict, description="Families NAME: {node, column, "
                                                                                   "top_percent | thresholds}.")
    batching: list[Batching] = Field(default_factory=list, description="The final output under each batching.")
    balance: list[ClusterBalance] = Field(default_factory=list, description="The final output through a mixture plan "
                                                                           "balanced by {column, power, max_repeats}, "
                                                                           "for each entry.")

    @model_validator(mode="after")
    def balance_entries_differ(self) -> VariantsConfig:
        entries = [(item.column, item.power, item.max_repeats) for item in self.balance]
        if len(set(entries)) != len(entries):
            raise ValueError("balance: the entries repeat")
        return self


class AblationConfig(Strict):
    name: str = "ablation"
    recipe: RecipeConfig
    tokenizer: TokenizerChoice
    heldout: HeldoutConfig = Field(default_factory=HeldoutConfig)
    proxy: ProxySettings
    variants: VariantsConfig = Field(default_factory=VariantsConfig)

    @model_validator(mode="after")
    def target_is_a_set(self) -> AblationConfig:
        names = ["slice", *self.heldout.sets]
        if self.proxy.target is not None and self.proxy.target not in names:
            raise ValueError(f"proxy.target {self.proxy.target!r} is not a held-out set ({', '.join(names)})")
        return self


class Recipe(BaseModel):
    """The recipe as a validated graph spec, its params already expanded against the recipe's own output."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    spec: GraphSpec
    where: str
    output: Path
    config_dir: Path
    source: str
    final: str
    order: list[str]


def resolve(base: Path, path: str) -> str:
    return str(path if Path(path).is_absolute() or "://" in path else (base / path).resolve())


def as_typed(base: Path, path: str) -> Path:
    """`path` relative to the ablation file, left relative when that is: the recipe's paths then read as they do
    under `gristmill run`, so a recipe already run there is recognised (source datasets hash their input paths)."""
    return Path(path) if Path(path).is_absolute() else base / path


def indexed_location(problem: str) -> str:
    """'variants.balance.0.power: …' as 'variants.balance[0].power: …', as the node checks name list items."""
    location, separator, message = problem.partition(": ")
    return re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", location) + separator + message


def load_ablation(path: str | Path, output: Path, recipe_output: str | Path | None = None) -> tuple[AblationConfig, Recipe]:
    """Read and validate an ablation YAML and its recipe; paths are made absolute (relative to the file).
    `recipe_output` overrides `recipe.output`."""
    from gristmill.pipeline.engine.graph import build_graph

    path = Path(path)
    raw = load_yaml(path, AblationError)
    try:
        config = AblationConfig.model_validate(raw)
    except ValidationError as problem:
        raise AblationError(f"{path}: {indexed_location(describe_validation_error(problem))}") from None
    base = path.parent.resolve()
    recipe = config.recipe
    if recipe.graph is not None:
        graph_path = as_typed(path.parent, recipe.graph)
        graph_raw = load_yaml(graph_path, AblationError)
        where, config_dir = str(graph_path), graph_path.parent
    else:
        graph_raw = {"name": config.name, "plugins": recipe.plugins,
                     "stages": {name: node.model_dump(exclude_defaults=True) for name, node in recipe.stages.items()}}
        where, config_dir = f"{path}: recipe", base
    try:
        spec = GraphSpec.model_validate(graph_raw)
    except ValidationError as problem:
        raise AblationError(f"{where}: {describe_validation_error(problem)}") from None
    if recipe_output is not None:
        recipe_output = Path(recipe_output)
    else:
        recipe_output = as_typed(path.parent, recipe.output) if recipe.output else output / "recipe"
    variables = {"output": str(recipe_output), "config_dir": str(config_dir)}
    spec = spec.model_copy(update={"output": None, "stages": {
        name: NodeSpec(stage=node.stage, input=expand_variables(node.input, variables),
                       params=expand_variables(node.params, variables))
        for name, node in spec.stages.items()}})
    try:
        graph = build_graph(spec, where, recipe_output, config_dir)
    except GraphError as error:
        raise AblationError(str(error)) from None
    order = [node.name for node in graph.nodes]
    known = registered_stages()
    sources = [name for name in order if issubclass(known[spec.stages[name].stage], SourceStage)]
    source = recipe.source or (sources[0] if sources else None)
    final = recipe.final or order[-1]

    def check_node(field: str, name: str | None) -> None:
        if name not in order:
            raise AblationError(f"{path}: {field}: {name!r} is not a node of the recipe ({', '.join(order)})")

    check_node("recipe.source", source)
    check_node("recipe.final", final)
    for index, name in enumerate(config.variants.cumulative):
        check_node(f"variants.cumulative[{index}]", name)
    for index, name in enumerate(config.variants.leave_one_out):
        check_node(f"variants.leave_one_out[{index}]", name)
        if name in sources:
            raise AblationError(f"{path}: variants.leave_one_out[{index}]: {name!r} is a source stage; "
                                "a recipe without its source has no data")
        if len(graph.node(name).inputs) != 1:
            raise AblationError(f"{path}: variants.leave_one_out[{index}]: {name!r} reads "
                                f"{len(graph.node(name).inputs)} inputs; only a one-input node can be left out")
    for family, threshold in config.variants.threshold.items():
        check_node(f"variants.threshold.{family}.node", threshold.node)
    config = config.model_copy(update={"heldout": config.heldout.model_copy(update={
        "sets": {name: resolve(base, item) for name, item in config.heldout.sets.items()}})})
    if config.tokenizer.path:
        config = config.model_copy(update={"tokenizer": TokenizerChoice(path=resolve(base, config.tokenizer.path))})
    return config, Recipe(spec=spec, where=where, output=recipe_output, config_dir=config_dir, source=source,
                          final=final, order=order)
