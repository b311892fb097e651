"""`gristmill ablate`: did a recipe make the data better, by how much, and which stage earned its cost?

Runs the recipe, takes a held-out slice of its final output before anything trains, builds every variant's
documents (recipe nodes as they are; leave-one-out and threshold variants as real graphs), keeps the slice out of
all of them by id and exact text hash, tokenizes and exports each with one tokenizer, trains every variant at equal
tokens with the same seeds through the proxy protocol (balance variants through a cluster-balanced mixture plan of
the final export), and compares them with bootstrap intervals over seeds.
Every step resumes: complete datasets, exports and runs are reused.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from gristmill.pipeline.engine.dataset import MANIFEST_NAME, Dataset, DatasetError
from gristmill.pipeline.engine.files import atomic_path, write_json_atomic
from gristmill.pipeline.engine.graph import Graph, GraphError, GraphSpec, NodeSpec, build_graph
from gristmill.pipeline.engine.ownership import claim
from gristmill.pipeline.engine.runner import RunFailed, run_graph
from gristmill.pipeline.tokens.export import STATS_FILE, export_buckets
from gristmill.pipeline.tokens.mixture import (
    PLAN_HEADER,
    ClusterBalance,
    Component,
    Mixture,
    MixtureError,
    compile_plan,
    write_plan,
)
from gristmill.stages.filters.exclude import text_hash
from gristmill.trainer.ablation_config import AblationConfig, AblationError, Recipe
from gristmill.trainer.protocol import (
    ProxyError,
    ProxyRun,
    candidate_scores,
    compare,
    run_all,
    write_heldout_documents,
)

RESULTS = "ablation.json"
STATE = "_ablation.json"
SLICE = "slice"
DECOMPOSE_MODE = {"dd": "decompose", "concat": "concat_chunk", "best_fit": "best_fit"}
# Settings that only choose which variants run; changing them extends or trims an ablation, never invalidates it.
VARIANT_SETTINGS = {"variants", "name"}


@dataclass(frozen=True)
class Documents:
    """One set of training documents: a recipe node's dataset, or a variant graph's final dataset."""

    key: str  # directory name under OUTPUT/data and OUTPUT/variants
    path: Path  # the dataset directory
    graph: Graph | None = None  # the variant graph that makes it, or None for a recipe node


@dataclass(frozen=True)
class Variant:
    name: str
    family: str
    label: str
    documents: Documents
    batching: str
    node: str | None = None
    group: str | None = None
    parameter: float | None = None
    compare_to: dict[str, str | None] = field(default_factory=dict)  # comparison kind -> variant name
    balance: ClusterBalance | None = None  # trains through a plan balanced so, not on the whole export

    @property
    def run_key(self) -> str:
        return f"{self.documents.key}.{self.batching}" + (f".{self.name}" if self.balance else "")


def node_path(recipe: Recipe, name: str) -> Path:
    return recipe.output / name


def downstream_of(recipe: Recipe, name: str) -> list[str]:
    """Nodes that read `name`'s output, directly or through others, in graph order."""
    reached = {name}
    for node in recipe.order:
        if any(upstream in reached for upstream in as_list(recipe.spec.stages[node].input)):
            reached.add(node)
    return [node for node in recipe.order if node in reached and node != name]


def as_list(value: str | list[str] | None) -> list[str]:
    return value if isinstance(value, list) else [value] * (value is not None)


def without_node(recipe: Recipe, left_out: str) -> tuple[GraphSpec | None, str]:
    """The recipe without one node, as a graph of the nodes downstream of it (the others are the recipe's own
    datasets, read where they are); its consumers read the left-out node's input instead. Returns the spec and
    the node whose output is the variant's final data; no spec when nothing reads the left-out node."""
    replacement = as_list(recipe.spec.stages[left_out].input)[0]  # one input (checked), maybe spelled as a list
    changed = downstream_of(recipe, left_out)

    def rewired(inputs: str | list[str] | None) -> str | list[str] | None:
        def one(name: str) -> str:
            name = replacement if name == left_out else name
            return name if name in changed else str(node_path(recipe, name)) if name in recipe.spec.stages else name
        return [one(item) for item in inputs] if isinstance(inputs, list) else one(inputs) if inputs else None

    stages = {name: NodeSpec(stage=recipe.spec.stages[name].stage, input=rewired(recipe.spec.stages[name].input),
                             params=recipe.spec.stages[name].params) for name in changed}
    final = recipe.final if recipe.final != left_out else replacement
    spec = GraphSpec(name=f"without-{left_out}", plugins=recipe.spec.plugins, stages=stages) if stages else None
    return spec, final


def build_variant_graph(spec: GraphSpec, recipe: Recipe, output: Path) -> Graph:
    try:
        return build_graph(spec, f"{recipe.where} ({spec.name})", output, recipe.config_dir)
    except Exception as error:  # noqa: BLE001 - a variant graph the recipe cannot make is one line, not a trace
        raise AblationError(f"variant {spec.name}: {error}") from None


def threshold_spec(name: str, source: Path, column: str, value: float, top_percent: bool) -> GraphSpec:
    keep = ({"mode": "top_fraction", "fraction": value / 100} if top_percent
            else {"mode": "threshold", "threshold": value})
    return GraphSpec(name=name, stages={name: NodeSpec(stage="quality_filter", input=str(source),
                                                       params={"column": column, "keep": keep})})


def plan_variants(config: AblationConfig, recipe: Recipe, output: Path) -> list[Variant]:
    """Every variant in report order: raw, cumulative steps in graph order, the full recipe, leave-one-out,
    threshold families, batching, balance."""
    default = config.proxy.batching
    recipe_documents = {name: Documents(f"recipe-{name}", node_path(recipe, name)) for name in recipe.order}
    variants: list[Variant] = []
    if config.variants.raw:
        variants.append(Variant("raw", "raw", f"raw ({recipe.source})", recipe_documents[recipe.source], default,
                                node=recipe.source))
    previous = "raw" if config.variants.raw else None
    cumulative = [name for name in recipe.order if name in config.variants.cumulative]
    for name in cumulative:
        variants.append(Variant(f"after-{name}", "cumulative", f"after {name}", recipe_documents[name], default,
                                node=name, compare_to={"raw": "raw" if config.variants.raw else None,
                                                       "previous": previous}))
        previous = f"after-{name}"
    if recipe.final in cumulative:
        reference = f"after-{recipe.final}"
    else:
        reference = "full"
        variants.append(Variant("full", "full", f"full recipe ({recipe.final})", recipe_documents[recipe.final],
                                default, node=recipe.final,
                                compare_to={"raw": "raw" if config.variants.raw else None, "previous": previous}))
    against = {"raw": "raw" if config.variants.raw else None, "full": reference}
    for name in config.variants.leave_one_out:
        spec, final = without_node(recipe, name)
        key = f"without-{name}"
        graph = build_variant_graph(spec, recipe, output / "variants" / key) if spec else None
        # Without a graph the variant is a recipe node's own dataset: it shares that node's data and runs.
        documents = (Documents(key, graph.output / final, graph) if graph and final in spec.stages
                     else recipe_documents[final])
        variants.append(Variant(key, "leave_one_out", f"without {name}", documents, default, node=name,
                                compare_to=against))
    for group, family in config.variants.threshold.items():
        top = family.top_percent is not None
        for value in family.values:
            key = f"{group}-{'top' if top else 'at'}{value:g}"
            spec = threshold_spec(key, node_path(recipe, family.node), family.column, value, top)
            graph = build_variant_graph(spec, recipe, output / "variants" / key)
            label = f"{group} top {value:g}%" if top else f"{group} ≥ {value:g}"
            variants.append(Variant(key, "threshold", label, Documents(key, graph.output / key, graph), default,
                                    node=family.node, group=group, parameter=value, compare_to=against))
    for batching in config.variants.batching:
        if batching != default:
            variants.append(Variant(f"batching-{batching}", "batching", f"batching {batching}",
                                    recipe_documents[recipe.final], batching, node=recipe.final,
                                    compare_to={"full": reference}))
    balances = config.variants.balance
    for balance in balances:
        label = f"balance {balance.column} power {balance.power:g}"
        if sum((item.column, item.power) == (balance.column, balance.power) for item in balances) > 1:
            label += f" repeats {balance.max_repeats}"
        variants.append(Variant(f"balance-{balance.column}-p{balance.power:g}-r{balance.max_repeats}", "balance",
                                label, recipe_documents[recipe.final], default, node=recipe.final, group="balance",
                                parameter=balance.power, compare_to={"full": reference}, balance=balance))
    return variants


def check_balance_columns(config: AblationConfig, recipe: Recipe) -> None:
    """Every balance column must be an integer column of the final output (it is kept through decompose)."""
    schema = Dataset(node_path(recipe, recipe.final)).schema()
    for index, balance in enumerate(config.variants.balance):
        where = f"variants.balance[{index}].column: {balance.column!r}"
        if balance.column not in schema.names:
            raise AblationError(f"{where} is not a column of the output of {recipe.final} ({', '.join(schema.names)})")
        if not pa.types.is_integer(schema.field(balance.column).type):
            raise AblationError(f"{where} is {schema.field(balance.column).type}, not an integer column")


def plan_directory(output: Path, variant: Variant) -> Path:
    return output / "plans" / variant.name


def write_balance_plan(variant: Variant, export: Path, tokens: int, seed: int, directory: Path) -> Path:
    """The variant's mixture plan: one component over the whole export, balanced as the variant asks, with the
    run's token budget. Compiled once (written to a sibling, then renamed); a complete plan is reused."""
    if (directory / PLAN_HEADER).exists():
        return directory
    mixture = Mixture(seed=seed, data=[str(export)],
                      components={"documents": Component(tokens=tokens, balance=variant.balance)})
    try:
        header, plan = compile_plan(mixture, export.parent, source_name=variant.name)
    except MixtureError as error:
        raise AblationError(f"variant {variant.name}: {error}") from None
    partial = directory.with_name(f"{directory.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)  # an interrupted write of ours
    write_plan(header, plan, partial)  # file paths are relative, the same from a sibling directory
    partial.rename(directory)
    return directory


def fingerprint(config: AblationConfig, recipe: Recipe) -> dict[str, Any]:
    settings = config.model_dump(mode="json", exclude=VARIANT_SETTINGS)
    settings["recipe"] = {"spec": recipe.spec.model_dump(mode="json"), "source": recipe.source, "final": recipe.final}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return {"fingerprint": digest, "settings": settings}


def claim_ablation(config: AblationConfig, recipe: Recipe, output: Path) -> None:
    """The output must be Gristmill's; an ablation already there must have been made with the same recipe, proxy,
    tokenizer and held-out settings (variants may change: finished ones are reused)."""
    try:
        claim(output)
    except DatasetError as error:
        raise AblationError(str(error)) from None
    state_path, state = output / STATE, fingerprint(config, recipe)
    if state_path.exists():
        previous = json.loads(state_path.read_text())
        if previous["fingerprint"] != state["fingerprint"]:
            changed = sorted(key for key in state["settings"] if previous["settings"].get(key) != state["settings"][key])
            raise AblationError(f"{output} holds an ablation made with a different {', '.join(changed) or 'config'}; "
                                "use another --output or the same settings")
        return
    write_json_atomic(state_path, json.dumps(state, indent=2) + "\n")


def run_quietly(graph: Graph, executor: Any, console: Any) -> None:
    try:
        run_graph(graph, executor, console=console)
    except (RunFailed, GraphError) as error:  # a failed shard, or an input missing when its node is planned
        raise AblationError(f"{graph.name}: {error}") from None


def slice_key(document_id: str, seed: int) -> int:
    return xxhash.xxh3_64_intdigest(f"{seed}\x1f{document_id}".encode())


def take_heldout_slice(config: AblationConfig, final: Path, directory: Path) -> Path:
    """The slice of the final output no variant may train on: documents whose seeded id hash falls in the lowest
    `fraction` of the hash range, at most `max_documents` of them (the smallest hashes). Written once."""
    path = directory / "slice.parquet"
    if path.exists():
        return path
    settings = config.heldout.slice
    dataset = Dataset(final)
    limit = int(settings.fraction * 2**64)
    chosen: list[tuple[int, str]] = []  # a max-heap of (−key, id): the max_documents smallest keys
    for batch in dataset.iter_batches(columns=["id"]):
        for document_id in batch.column(0).to_pylist():
            key = slice_key(document_id, settings.seed)
            if key < limit:
                heapq.heappush(chosen, (-key, document_id))
                if len(chosen) > settings.max_documents:
                    heapq.heappop(chosen)
    wanted = {document_id for _, document_id in chosen}
    if not wanted:
        raise AblationError(f"{final}: the held-out slice is empty; raise heldout.slice.fraction")
    rows: dict[str, str] = {}
    for batch in dataset.iter_batches(columns=["id", "text"]):
        for document_id, text in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            if document_id in wanted and text is not None:
                rows[document_id] = text
    ordered = sorted(rows)
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": ordered, "text": [rows[item] for item in ordered]})
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary, compression="zstd")
    return path


def heldout_set_dataset(name: str, path: str, directory: Path, executor: Any, console: Any) -> Path:
    """A user held-out set as a Gristmill dataset: used as it is, or read by read_text into one."""
    if (Path(path) / MANIFEST_NAME).exists():
        return Path(path)
    spec = GraphSpec(name=f"heldout-{name}", stages={"documents": NodeSpec(stage="read_text",
                                                                           params={"paths": [path]})})
    graph = build_graph(spec, f"heldout.sets.{name}", directory / name)
    run_quietly(graph, executor, console)
    return graph.output / "documents"


def dataset_texts(path: Path, batch_rows: int = 1024):
    for batch in Dataset(path).iter_batches(columns=["text"], batch_rows=batch_rows):
        yield [text for text in batch.column(0).to_pylist() if text]


def write_exclusion_list(slice_path: Path, heldout_sets: dict[str, Path], path: Path) -> Path:
    """Ids and exact text hashes of the slice, and text hashes of every user held-out set: what no training
    document may be."""
    if path.exists():
        return path
    held = pq.read_table(slice_path)
    ids = held.column("id").to_pylist()
    hashes = [text_hash(text) for text in held.column("text").to_pylist()]
    for dataset in heldout_sets.values():
        for texts in dataset_texts(dataset):
            hashes.extend(text_hash(text) for text in texts)
    table = pa.table({"id": ids + [None] * (len(hashes) - len(ids)), "text_hash": hashes})
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary, compression="zstd")
    return path


def prepare_tokenizer(config: AblationConfig, training_documents: Path, directory: Path) -> str:
    """The one tokenizer of every variant and held-out set: the given one, or one trained on the final output with
    the held-out slice excluded (trained once; a complete one is reused)."""
    from gristmill.stages.tokens.tokenization import TRAINING_FILE, train_from_dataset

    if config.tokenizer.path:
        return config.tokenizer.path
    if not (directory / TRAINING_FILE).exists():
        if directory.exists():
            shutil.rmtree(directory)  # an interrupted training of ours
        settings = config.tokenizer.train
        train_from_dataset(training_documents, settings.vocab_size, directory, settings.sample_bytes, settings.seed)
    return str(directory)


def preparation_graph(documents: Documents, batchings: list[str], exclusion: Path, tokenizer: str | None,
                      config: AblationConfig, directory: Path, keep_columns: list[str] | None = None) -> Graph:
    """exclude (the held-out list) → tokenize → one decompose node per batching, for one set of documents; with
    `keep_columns` (balance columns), one more at the default batching that keeps them beside `source`. A node of
    its own, named by its columns: the plain one stays as it was, so balance variants extend an ablation."""
    stages = {"documents": NodeSpec(stage="exclude", input=str(documents.path), params={"list": str(exclusion)})}
    if tokenizer is not None:
        stages["tokens"] = NodeSpec(stage="tokenize", input="documents", params={"tokenizer": tokenizer})
        proxy = config.proxy
        nodes = {batching: (batching, {}) for batching in batchings}
        if keep_columns:
            nodes[kept_node(proxy.batching, keep_columns)] = (proxy.batching,
                                                              {"keep_columns": ["source", *keep_columns]})
        for name, (batching, kept) in nodes.items():
            params: dict[str, Any] = {"mode": DECOMPOSE_MODE[batching], **kept}
            if batching == "dd":
                params |= {"min_bucket": proxy.min_bucket, "max_bucket": proxy.max_bucket}
            else:
                params["sequence_length"] = proxy.seq_len
            stages[name] = NodeSpec(stage="decompose", input="tokens", params=params)
    return build_graph(GraphSpec(name=f"prepare-{documents.key}", stages=stages), f"data {documents.key}", directory)


def kept_node(batching: str, columns: list[str]) -> str:
    """The decompose node (and export) that keeps balance columns: `dd-keep-semantic_cluster`."""
    return f"{batching}-keep-{'-'.join(columns)}"


def export_once(source: Path, output: Path) -> dict[str, Any]:
    """Export a decomposed dataset, or read back a complete export (stats.json is written last)."""
    if (output / STATS_FILE).exists():
        return json.loads((output / STATS_FILE).read_text())
    if output.exists():
        shutil.rmtree(output)  # an export of ours that was interrupted
    return export_buckets(source, output)


@dataclass
class PreparedData:
    documents: int
    heldout_excluded: int
    exports: dict[str, Path]
    tokens: dict[str, int]  # tokens each export holds


def runs_of(config: AblationConfig, variants: list[Variant], prepared: dict[str, PreparedData],
            heldout: dict[str, str], vocab_size: int, output: Path, threads: int | None) -> list[ProxyRun]:
    protocol = config.proxy.protocol()
    runs, seen = [], set()
    for variant in variants:
        if variant.run_key in seen:
            continue
        seen.add(variant.run_key)
        export = prepared[variant.documents.key].exports[variant.batching]
        data = {"plan": str(plan_directory(output, variant))} if variant.balance else {"data": [str(export)]}
        for seed in protocol.seeds:
            training = protocol.train_config(output / "runs" / variant.run_key / f"seed-{seed}", seed, heldout,
                                             vocab_size, batching=variant.batching, **data)
            runs.append(ProxyRun(variant.run_key, seed, training, threads))
    return runs


def describe(comparison: dict[str, Any]) -> str:
    low, high = comparison["interval"]
    separated = "separated" if comparison["separated"] else "not separated"
    return f"{comparison['delta']:+.4f} ± {(high - low) / 2:.4f} ({separated} over {comparison['seeds']} seeds)"


def verdict(comparison: dict[str, Any], lower_is_better_for_this: bool = True) -> str:
    if not comparison["separated"]:
        return "made no separated difference"
    better = comparison["delta"] < 0 if lower_is_better_for_this else comparison["delta"] > 0
    return "helped" if better else "hurt"


def findings_of(entries: dict[str, dict[str, Any]], reference: str,
                recommendations: list[dict[str, Any]]) -> list[str]:
    """Plain-language lines: what each stage removed and what it did to held-out bits per byte."""
    lines = []
    for entry in entries.values():
        comparisons = entry["comparisons"]
        if entry["family"] in ("cumulative", "full") and comparisons.get("previous"):
            step = comparisons["previous"]
            what = entry["node"] if entry["family"] == "cumulative" else "the rest of the recipe"
            lines.append(f"{what} removed {1 - step['token_share']:.0%} of tokens and changed held-out bpb by "
                         f"{describe(step)}: it {verdict(step)}.")
        if entry["family"] == "leave_one_out" and comparisons.get("full"):
            step = comparisons["full"]
            lines.append(f"without {entry['node']} the data keeps {step['token_share']:.2f}× the tokens and held-out "
                         f"bpb changes by {describe(step)}: {entry['node']} {verdict(step, False)}.")
        if entry["family"] in ("batching", "balance") and comparisons.get("full"):
            step = comparisons["full"]
            against = entries[step["against"]]["batching" if entry["family"] == "batching" else "label"]
            lines.append(f"{entry['label']} against {against}: held-out bpb {describe(step)}.")
        if entry["epochs"] > 1:
            lines.append(f"{entry['label']} repeated its data {entry['epochs']:.1f} times to reach the budget.")
    if step := entries[reference]["comparisons"].get("raw"):
        lines.append(f"the full recipe kept {step['token_share']:.0%} of the raw tokens and changed held-out bpb by "
                     f"{describe(step)} against raw.")
    for item in (item for item in recommendations if item["runner_up"]):
        separated = "separated" if item["separated"] else "not separated"
        lines.append(f"{item['group']}: best is {item['best_label']}, {item['margin']:.4f} bpb better than "
                     f"{item['runner_up_label']} ({separated} over seeds).")
    return lines


def reference_variant(variants: list[Variant], recipe: Recipe) -> str:
    """The variant holding the full recipe's output at the default batching: what leave-one-out is measured from."""
    return next(variant.name for variant in variants if variant.family in ("full", "cumulative")
                and variant.node == recipe.final)


def recommend(config: AblationConfig, variants: list[Variant], entries: dict[str, dict[str, Any]]) -> list[dict]:
    recommendations = []
    columns = {group: family.column for group, family in config.variants.threshold.items()}
    if config.variants.balance:
        columns["balance"] = ", ".join(dict.fromkeys(item.column for item in config.variants.balance))
    for group, column in columns.items():
        members = [variant.name for variant in variants if variant.group == group]
        ranked = sorted(members, key=lambda name: entries[name]["target_bits_per_byte"]["mean"])
        best = ranked[0]
        item = {"group": group, "column": column, "best": best, "best_label": entries[best]["label"],
                "parameter": entries[best]["parameter"], "runner_up": None, "runner_up_label": None,
                "margin": 0.0, "separated": False}
        if len(ranked) > 1:
            runner_up = ranked[1]
            comparison = compare(entries[runner_up]["target_bits_per_byte"]["per_seed"],
                                 entries[best]["target_bits_per_byte"]["per_seed"])
            item |= {"runner_up": runner_up, "runner_up_label": entries[runner_up]["label"],
                     "margin": comparison["delta"], "margin_interval": comparison["interval"],
                     "separated": comparison["separated"]}
        recommendations.append(item)
    return recommendations


def analyse(config: AblationConfig, recipe: Recipe, variants: list[Variant], prepared: dict[str, PreparedData],
            results: dict[tuple[str, int], dict], heldout_names: list[str], slice_documents: int,
            seconds: dict[str, float]) -> dict:
    protocol = config.proxy.protocol()
    trained = {result["tokens_trained"] for result in results.values()}
    if len(trained) != 1:
        raise AblationError(f"runs trained unequal token counts {sorted(trained)}: the comparison is void")
    entries: dict[str, dict[str, Any]] = {}
    for variant in variants:
        data = prepared[variant.documents.key]
        unique = data.tokens[variant.batching]
        scores = candidate_scores(results, variant.run_key, protocol.seeds, config.proxy.target)
        entries[variant.name] = {
            "name": variant.name, "family": variant.family, "label": variant.label, "node": variant.node,
            "group": variant.group, "parameter": variant.parameter, "batching": variant.batching,
            "balance": variant.balance.model_dump() if variant.balance else None,
            "documents": data.documents, "unique_tokens": unique, "heldout_excluded": data.heldout_excluded,
            "epochs": protocol.tokens_per_run / unique if unique else float("inf"),
            "tokens_trained": results[variant.run_key, protocol.seeds[0]]["tokens_trained"],
            **scores,
            "loss_curves": {str(seed): results[variant.run_key, seed]["loss_curve"] for seed in protocol.seeds},
            "comparisons": {},
        }
    for variant in variants:
        entry = entries[variant.name]
        for kind in ("raw", "previous", "full"):
            other = variant.compare_to.get(kind)
            if other is None or other == variant.name or other not in entries:
                entry["comparisons"][kind] = None
                continue
            comparison = compare(entry["target_bits_per_byte"]["per_seed"],
                                 entries[other]["target_bits_per_byte"]["per_seed"])
            entry["comparisons"][kind] = comparison | {
                "against": other, "token_share": entry["unique_tokens"] / max(entries[other]["unique_tokens"], 1)}
    recommendations = recommend(config, variants, entries)
    return {
        "format": "gristmill.ablation", "version": 1, "name": config.name,
        "model": config.proxy.model, "tokens_per_run": protocol.tokens_per_run, "steps": protocol.steps,
        "tokens_per_step": protocol.tokens_per_step, "seq_len": config.proxy.seq_len,
        "seeds": protocol.seeds, "heldout": heldout_names, "target": config.proxy.target or "mean",
        "recipe": {"source": recipe.source, "final": recipe.final, "nodes": recipe.order, "output": str(recipe.output)},
        "heldout_slice": {"node": recipe.final, "documents": slice_documents,
                          "fraction": config.heldout.slice.fraction},
        "variants": list(entries.values()),
        "recommendations": recommendations,
        "findings": findings_of(entries, reference_variant(variants, recipe), recommendations),
        "seconds": seconds,
    }


def run_ablation(config: AblationConfig, recipe: Recipe, output: str | Path, executor: Any = None,
                 echo: Callable[[str], None] = lambda line: None, console: Any = None) -> dict[str, Any]:
    """Run every step that is not complete and write OUTPUT/ablation.json; returns it."""
    from gristmill.pipeline.engine.executors import InProcessExecutor
    from gristmill.stages.tokens.tokenization import load_tokenizer

    output = Path(output).resolve()
    executor = executor or InProcessExecutor()
    claim_ablation(config, recipe, output)
    started = seconds_mark = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal seconds_mark
        now = time.perf_counter()
        seconds[name] = seconds.get(name, 0.0) + now - seconds_mark
        seconds_mark = now

    echo(f"recipe: {len(recipe.order)} nodes into {recipe.output}")
    run_quietly(build_graph(recipe.spec, recipe.where, recipe.output, recipe.config_dir), executor, console)
    check_balance_columns(config, recipe)
    lap("recipe")
    # Variant graphs read the recipe's datasets, and a graph is only built once its input datasets are complete.
    variants = plan_variants(config, recipe, output)

    heldout_dir = output / "heldout"
    slice_path = take_heldout_slice(config, node_path(recipe, recipe.final), heldout_dir)
    user_sets = {name: heldout_set_dataset(name, path, heldout_dir / "sets", executor, console)
                 for name, path in config.heldout.sets.items()}
    exclusion = write_exclusion_list(slice_path, user_sets, heldout_dir / "exclude.parquet")
    slice_documents = pq.read_metadata(slice_path).num_rows
    echo(f"held-out slice: {slice_documents:,} documents of {recipe.final}, excluded from every variant")
    lap("heldout")

    graphs = {variant.documents.graph.output: variant.documents.graph for variant in variants
              if variant.documents.graph}
    for graph in graphs.values():
        echo(f"variant graph {graph.name}")
        run_quietly(graph, executor, console)
    lap("variants")

    sources = {variant.documents.key: variant.documents for variant in variants}
    batchings = {key: sorted({variant.batching for variant in variants if variant.documents.key == key})
                 for key in sources}
    final_key = f"recipe-{recipe.final}"
    if config.tokenizer.train:
        final_documents = Documents(final_key, node_path(recipe, recipe.final))
        run_quietly(preparation_graph(final_documents, [], exclusion, None, config, output / "data" / final_key),
                    executor, console)
    tokenizer_path = prepare_tokenizer(config, output / "data" / final_key / "documents", output / "tokenizer")
    tokenizer = load_tokenizer(tokenizer_path)
    prepared: dict[str, PreparedData] = {}
    for key, documents in sources.items():
        directory = output / "data" / key
        kept = sorted({variant.balance.column for variant in variants
                       if variant.balance and variant.documents.key == key})
        run_quietly(preparation_graph(documents, batchings[key], exclusion, tokenizer_path, config, directory, kept),
                    executor, console)
        manifest = Dataset(directory / "documents").manifest()
        nodes = batchings[key] + [kept_node(config.proxy.batching, kept)] * bool(kept)
        exports = {node: directory / f"export-{node}" for node in nodes}
        stats = {node: export_once(directory / node, path) for node, path in exports.items()}
        prepared[key] = PreparedData(manifest.rows, sum(manifest.rejected.values()), exports,
                                     {batching: int(item["tokens"]) for batching, item in stats.items()})
    heldout = {SLICE: str(heldout_dir / "tokens" / SLICE)}
    heldout |= {name: str(heldout_dir / "tokens" / name) for name in user_sets}
    texts = {SLICE: [pq.read_table(slice_path, columns=["text"]).column(0).to_pylist()]}
    for name, path in heldout.items():
        if not (Path(path) / "documents.json").exists():
            write_heldout_documents(texts[SLICE] if name == SLICE else dataset_texts(user_sets[name]), tokenizer,
                                    Path(path) / "documents")
    balance_columns = sorted({variant.balance.column for variant in variants if variant.balance})
    for variant in variants:
        if variant.balance:
            export = prepared[variant.documents.key].exports[kept_node(variant.batching, balance_columns)]
            write_balance_plan(variant, export, config.proxy.protocol().tokens_per_run, config.proxy.seeds[0],
                               plan_directory(output, variant))
    lap("tokens")

    vocab_size = 64 * -(-tokenizer.vocab_size // 64)  # one vocabulary, so one initial weight draw per seed
    workers = getattr(executor, "workers", 1)
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    runs = runs_of(config, variants, prepared, heldout, vocab_size, output, threads)

    def on_result(run: ProxyRun, result: dict) -> None:
        scores = ", ".join(f"{name} {value:.4f}" for name, value in result["bits_per_byte"].items())
        status = "reused" if result["reused"] else f"{result['seconds']:.1f} s"
        echo(f"{run.candidate:<28} seed {run.seed:<3} {status:>8}  bits/byte {scores}")

    try:
        results = run_all(runs, executor, on_result)
    except ProxyError as error:
        raise AblationError(str(error)) from None
    lap("training")
    seconds["training_runs"] = sum(result["training_seconds"] for result in results.values())
    seconds["total"] = time.perf_counter() - started
    summary = analyse(config, recipe, variants, prepared, results, list(heldout), slice_documents, seconds)
    write_json_atomic(output / RESULTS, json.dumps(summary, indent=2) + "\n")
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The comparison as a plain-text table a terminal shows: one row per variant, then the findings."""
    seeds = len(summary["seeds"])
    lines = [f"{summary['name']}: {summary['model']} model, {summary['tokens_per_run']:,} tokens per run, "
             f"{seeds} seed{'s' * (seeds > 1)}, held-out {', '.join(summary['heldout'])} (target: {summary['target']})",
             f"{'variant':<28} {'documents':>9} {'tokens':>10} {'epochs':>6} {'bits/byte':>17} {'vs raw':>26}"]
    for entry in summary["variants"]:
        score = entry["target_bits_per_byte"]
        against = entry["comparisons"].get("raw") or entry["comparisons"].get("full")
        delta = ""
        if against:
            low, high = against["interval"]
            mark = " *" if against["separated"] else ""
            delta = f"{against['delta']:+.4f} [{low:+.4f}, {high:+.4f}]{mark}"
            if against["against"] != "raw":
                delta = f"{delta} vs {against['against']}"
        lines.append(f"{entry['label'][:28]:<28} {entry['documents']:>9,} {entry['unique_tokens']:>10,} "
                     f"{entry['epochs']:>6.2f} {score['mean']:>8.4f} ± {score['std']:.4f} {delta:>26}")
    lines.append("* separated: every seed of one beats every seed of the other")
    lines.extend(f"- {finding}" for finding in summary["findings"])
    return lines
