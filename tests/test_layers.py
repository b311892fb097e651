"""Imports point down the layers that docs/ARCHITECTURE.md draws, and no module reaches itself through others.

Every module is parsed, not imported, so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "stages", "classifiers", "trainer", "tokenizer_eval")

# (source path prefix, layer, rank), most specific prefix first. A module may import its own layer and any
# layer of lower rank; two layers of one rank are siblings and do not import each other.
LAYERS = (
    ("pipeline/engine/", "engine", 0),
    ("pipeline/__init__.py", "engine", 0),
    ("stages/", "stages", 1),
    ("pipeline/demo/", "demo", 1),
    ("pipeline/tokens/", "token formats", 2),
    ("trainer/", "trainer", 3),
    ("classifiers/", "classifiers", 4),
    ("tokenizer_eval/", "tokenizer_eval", 4),
    ("pipeline/reports/", "reports", 5),
    ("pipeline/cli/", "cli", 6),
    ("pipeline/__main__.py", "cli", 6),
)


@dataclass(frozen=True)
class Import:
    source: str  # path of the importing file, relative to the source root
    line: int
    target: str  # path of the imported module's file


def layer_of(path: str) -> tuple[str, int]:
    for prefix, layer, rank in LAYERS:
        if path == prefix or path.startswith(prefix):
            return layer, rank
    raise AssertionError(f"{path}: in no layer; add it to LAYERS here and to docs/ARCHITECTURE.md")


def module_file(root: Path, dotted: str) -> str | None:
    """The source file of `gristmill.<package>...`, or None for anything outside the layered packages."""
    parts = dotted.split(".")
    if parts[0] != "gristmill" or len(parts) < 2 or parts[1] not in PACKAGES:
        return None
    base = Path(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if (root / candidate).is_file():
            return candidate.as_posix()
    return None


def package_of(path: str) -> str:
    """The dotted package a source file sits in, for resolving relative imports."""
    parts = Path(path).parent.parts
    return ".".join(("gristmill", *parts))


def imports_in(root: Path, path: str) -> list[Import]:
    """Every import of a layered module in one file, at any depth (functions, TYPE_CHECKING blocks)."""
    tree = ast.parse((root / path).read_text(), filename=path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                package = package_of(path).split(".")
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            # `from package import submodule` imports the submodule; `from module import name` the module.
            names = [f"{module}.{alias.name}" if module_file(root, f"{module}.{alias.name}") else module
                     for alias in node.names]
        else:
            continue
        for name in dict.fromkeys(names):
            target = module_file(root, name)
            if target is not None and target != path:
                found.append(Import(path, node.lineno, target))
    return found


def all_imports(root: Path) -> list[Import]:
    files = sorted(path.relative_to(root).as_posix() for package in PACKAGES for path in (root / package).rglob("*.py"))
    return [item for path in files for item in imports_in(root, path)]


def layer_violations(root: Path) -> list[str]:
    problems = []
    for item in all_imports(root):
        own_layer, own_rank = layer_of(item.source)
        target_layer, target_rank = layer_of(item.target)
        if target_rank > own_rank or (target_rank == own_rank and target_layer != own_layer):
            relation = "a lower layer" if target_rank > own_rank else "a sibling layer"
            problems.append(f"{item.source}:{item.line} imports {item.target} ({target_layer}) "
                            f"from {own_layer} ({relation})")
    return problems


def import_cycles(root: Path) -> list[str]:
    """One cycle per strongly connected group of modules, as `a.py:line -> b.py:line -> a.py`."""
    edges: dict[str, dict[str, int]] = {}
    for item in all_imports(root):
        edges.setdefault(item.source, {}).setdefault(item.target, item.line)
    cycles, settled = [], set()
    for start in sorted(edges):
        if start in settled:
            continue
        cycle = _cycle_through(start, edges)
        if cycle:
            settled.update(cycle)
            hops = [f"{module}:{edges[module][after]}" for module, after in zip(cycle, cycle[1:] + cycle[:1])]
            cycles.append(" -> ".join([*hops, cycle[0]]))
    return cycles


def _cycle_through(start: str, edges: dict[str, dict[str, int]]) -> list[str]:
    """A shortest chain of imports from `start` back to itself (breadth first), or []."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for target in sorted(edges.get(module, {})):
                if target == start:
                    chain = [module]
                    while chain[-1] != start:
                        chain.append(previous[chain[-1]])
                    return chain[::-1]
                if target not in previous:
                    previous[target] = module
                    following.append(target)
        frontier = following
    return []


def test_imports_point_down_the_layers():
    problems = layer_violations(SOURCE_ROOT)
    assert not problems, "imports against the layer rule (docs/ARCHITECTURE.md):\n" + "\n".join(problems)


def test_no_import_cycles():
    cycles = import_cycles(SOURCE_ROOT)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_module_sits_in_a_layer():
    modules = [path for package in PACKAGES for path in (SOURCE_ROOT / package).rglob("*.py")]
    assert len(modules) > 80
    for path in modules:
        layer_of(path.relative_to(SOURCE_ROOT).as_posix())


def plant(root: Path, files: dict[str, str]) -> None:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)


def test_an_upward_import_inside_a_function_is_named(tmp_path):
    plant(tmp_path, {
        "pipeline/__init__.py": "",
        "pipeline/engine/__init__.py": "",
        "pipeline/engine/stage.py": '"""Stage API."""\n\n\ndef registered():\n    from gristmill.stages.filters import c4\n',
        "pipeline/cli/__init__.py": "",
        "pipeline/cli/main.py": "from gristmill.pipeline.engine import stage\nfrom gristmill.stages.filters.c4 import C4\n",
        "stages/__init__.py": "",
        "stages/filters/__init__.py": "",
        "stages/filters/c4.py": "from ...pipeline.engine.stage import registered\n",
        "classifiers/__init__.py": "",
        "classifiers/train.py": "import gristmill.tokenizer_eval.proxy\n",
        "tokenizer_eval/__init__.py": "",
        "tokenizer_eval/proxy.py": "import json\nfrom gristmill.pipeline.cli import main\n",
    })
    assert layer_violations(tmp_path) == [
        "classifiers/train.py:1 imports tokenizer_eval/proxy.py (tokenizer_eval) from classifiers (a sibling layer)",
        "pipeline/engine/stage.py:5 imports stages/filters/c4.py (stages) from engine (a lower layer)",
        "tokenizer_eval/proxy.py:2 imports pipeline/cli/main.py (cli) from tokenizer_eval (a lower layer)",
    ]
    assert import_cycles(tmp_path) == [
        "pipeline/engine/stage.py:5 -> stages/filters/c4.py:1 -> pipeline/engine/stage.py",
    ]


def test_a_cycle_within_one_layer_is_named(tmp_path):
    plant(tmp_path, {
        "trainer/__init__.py": "",
        "trainer/model.py": "from gristmill.trainer import data\n",
        "trainer/data.py": "import numpy\n\n\ndef load():\n    from gristmill.trainer.train import train\n",
        "trainer/train.py": "from gristmill.trainer.model import GPT\n",
    })
    assert layer_violations(tmp_path) == []
    assert import_cycles(tmp_path) == ["trainer/data.py:5 -> trainer/train.py:1 -> trainer/model.py:1 -> trainer/data.py"]
