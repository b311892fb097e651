"""The built wheel installs one name, `gristmill`, and runs on its own; the editable install serves the same name.

Generic top-level packages (`pipeline`, `stages`, `trainer`...) would clash with other distributions, so this
builds the wheel from a copy of the source, installs it into a fresh venv and runs commands from there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO

MAIN_SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
BUILD_LEFTOVERS = shutil.ignore_patterns(".*", "__pycache__", "*.egg-info", "build", "runs", "tests", "benchmarks", "docs")


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """A fresh venv holding only the built wheel, its site-packages, and what the wheel put there.

    Built from a copy, so a stale `build/` or egg-info in the checkout cannot leak into the wheel. The main
    venv's site-packages then supplies the dependencies: listed in a .pth it comes after the wheel's own
    folder, and the .pth files inside it are not run, so the editable install's finder stays inactive.
    """
    root = tmp_path_factory.mktemp("wheel")
    source, wheels, venv = root / "source", root / "wheels", root / "venv"
    shutil.copytree(REPO, source, ignore=BUILD_LEFTOVERS)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(wheels), str(source)], cwd=root)
    [wheel] = wheels.glob("gristmill-*.whl")
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        cwd=root)
    site_packages = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             cwd=root).stdout.strip())
    installed = sorted(entry.name for entry in site_packages.iterdir())
    (site_packages / "dependencies.pth").write_text(f"{MAIN_SITE_PACKAGES}\n")
    return venv, site_packages, installed


def test_the_wheel_puts_only_gristmill_and_its_metadata_into_site_packages(wheel_venv) -> None:
    _, site_packages, installed = wheel_venv
    assert installed[0] == "gristmill" and len(installed) == 2 and installed[1].startswith("gristmill-")
    assert installed[1].endswith(".dist-info")
    top_level = sorted(entry.name for entry in (site_packages / "gristmill").iterdir())
    assert top_level == ["classifiers", "configs", "pipeline", "stages", "tokenizer_eval", "trainer"]
    prompts = sorted(path.name for path in (site_packages / "gristmill" / "configs" / "prompts").glob("*.yaml"))
    assert prompts == sorted(path.name for path in (REPO / "configs" / "prompts").glob("*.yaml")) and prompts


def test_the_installed_wheel_runs_help_sample_and_ingest_with_its_own_code(wheel_venv, tmp_path: Path) -> None:
    venv, site_packages, _ = wheel_venv
    python, gristmill = venv / "bin" / "python", venv / "bin" / "gristmill"

    imported = json.loads(run([str(python), "-c", (
        "import json, importlib.metadata, gristmill.stages, gristmill.pipeline.cli.main as cli; "
        "ingest = [e.value for e in importlib.metadata.entry_points(group='gristmill.stages') if e.name == 'ingest']; "
        "print(json.dumps({'stages': gristmill.stages.__file__, 'cli': cli.__file__, 'ingest': ingest}))")],
        cwd=tmp_path).stdout)
    for module_file in (imported["stages"], imported["cli"]):
        assert Path(module_file).is_relative_to(site_packages / "gristmill")
    assert imported["ingest"] == ["gristmill.stages.ingest.ingest:Ingest"]

    assert "ingest" in run([str(gristmill), "--help"], cwd=tmp_path).stdout
    run([str(gristmill), "sample", "--output", str(tmp_path / "sample"), "--pages", "20"], cwd=tmp_path)
    run([str(gristmill), "ingest", "--input", str(tmp_path / "sample" / "*.warc.gz"), "--output",
         str(tmp_path / "ingest"), "--executor", "inprocess"], cwd=tmp_path)
    documents = pq.read_table(tmp_path / "ingest" / "part-00000.parquet")
    assert documents.num_rows > 0 and "text" in documents.column_names


def test_the_editable_install_imports_the_same_names_from_the_source_tree(tmp_path: Path) -> None:
    imported = run([sys.executable, "-c", "import gristmill.stages, gristmill.pipeline; print(gristmill.stages.__file__)"],
                   cwd=tmp_path).stdout.strip()
    assert Path(imported) == REPO / "stages" / "__init__.py"
