"""Reports in a real browser: headless Chromium opens the HTML and every plot must be decoded, laid out and painted.

Skips when no Chromium or Chrome binary is installed (Debian: `apt-get install chromium`, which `.ci/run` does, so
this skip fails CI); without one, the report tests still validate the HTML and the embedded PNGs with `check_html`.
`assert_plots_visible(path)` takes any report's HTML, so each report adds one test here.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from gristmill.pipeline.engine.report import check_html

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH = 1200  # one window width for the probe and the screenshot, so both lay the page out alike
BROWSER = next((path for name in BROWSERS if (path := shutil.which(name))), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--disable-extensions", "--virtual-time-budget=10000"]
# Run after load: what the browser made of each image and heading, written into the page for --dump-dom to print.
PROBE = """<script>addEventListener('load', () => {
  const images = [...document.images].map(image => {
    const box = image.getBoundingClientRect(), style = getComputedStyle(image);
    return {complete: image.complete, naturalWidth: image.naturalWidth, naturalHeight: image.naturalHeight,
            width: box.width, height: box.height, top: box.top + scrollY,
            shown: style.display !== 'none' && style.visibility !== 'hidden' && Number(style.opacity) > 0};
  });
  const headings = [...document.querySelectorAll('h1, h2')].map(heading => heading.textContent.trim());
  const out = document.createElement('pre');
  out.id = 'render-check';
  out.textContent = JSON.stringify({images, headings, height: document.documentElement.scrollHeight});
  document.body.appendChild(out);
});</script>"""

# Without a browser these skip (Debian: apt-get install chromium); .ci/run installs it and fails on such a skip.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(BROWSER is None, reason="no chromium or chrome binary")]


def run_browser(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([BROWSER, *FLAGS, *arguments], capture_output=True, text=True, timeout=120, check=True)


def render(html_path: Path, work: Path) -> dict:
    """Images (decoded size, laid-out box, visibility) and headings as headless Chromium renders the page."""
    probed = work / f"probed-{html_path.name}"
    probed.write_text(html_path.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = run_browser(f"--window-size={WIDTH},900", "--dump-dom", probed.as_uri()).stdout
    found = re.search(r'<pre id="render-check">(.*?)</pre>', dom, re.S)
    assert found, f"the browser did not run the page's load handler:\n{dom[:500]}"
    return json.loads(html.unescape(found.group(1)))


def coloured_fraction(screenshot: Path, top: int, bottom: int) -> float:
    """Share of pixels between two heights that are clearly not grey: plot lines and markers, not text or tables."""
    import matplotlib.image

    pixels = matplotlib.image.imread(screenshot)[top:bottom, :, :3]
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    return float((spread > 0.25).mean())


def assert_plots_visible(html_path: Path, work: Path | None = None, minimum_images: int = 1) -> dict:
    """Opens a report in headless Chromium; every image must decode, have a real size on the page and be shown,
    and the first plot must be painted in colour in a screenshot. Returns what the browser saw.

    `work` holds the probed copy of the page and the screenshot (default: a new temporary directory)."""
    work = Path(work or tempfile.mkdtemp(prefix="report-browser-"))
    expected = check_html(html_path)
    seen = render(html_path, work)
    assert seen["headings"] == expected["headings"]
    assert len(seen["images"]) == len(expected["images"]) >= minimum_images
    for image, (width, height) in zip(seen["images"], expected["images"]):
        assert image["complete"] and (image["naturalWidth"], image["naturalHeight"]) == (width, height), image
        assert image["shown"] and image["width"] >= 200 and image["height"] >= 100, image
    first = seen["images"][0]
    window_height = int(first["top"] + first["height"]) + 50
    screenshot = work / f"{html_path.stem}.png"
    run_browser(f"--window-size={WIDTH},{window_height}", f"--screenshot={screenshot}", html_path.as_uri())
    assert coloured_fraction(screenshot, int(first["top"]), int(first["top"] + first["height"])) > 0.002
    return seen


def synthetic_sweep_report(directory: Path) -> Path:
    """A sweep report from made-up runs (no training): loss falls with the weight of b."""
    from gristmill.trainer.predict import PredictConfig, analyse, critical_mixture_ratio
    from gristmill.trainer.sweep_report import write_sweep_report

    names, heldout = ["a", "b", "c"], ["general", "b", "target"]
    rng = np.random.default_rng(0)
    weights = rng.dirichlet([1, 1, 1], 12)
    scores = {"general": 2.0 + 0.3 / (1.05 - weights[:, 1]), "b": 1.5 + 0.2 / np.sqrt(weights[:, 1] + 0.01)}
    scores["target"] = 0.8 * scores["b"] + 0.2 * scores["general"] + rng.normal(0, 0.01, 12)
    summary = {
        "components": names, "heldout": heldout, "target": "target", "tokens_per_run": 30_720, "seeds": [0],
        "natural_prior": {"a": 0.5, "b": 0.3, "c": 0.2}, "weight_caps": {"a": 1.0, "b": 0.8, "c": 1.0},
        "runs": [{"name": f"mix-{index:03d}", "weights": dict(zip(names, row.tolist())), "seconds": 1.0,
                  "bits_per_byte": {name: float(scores[name][index]) for name in heldout},
                  "target_bits_per_byte": float(scores["target"][index])} for index, row in enumerate(weights)],
    }
    config = PredictConfig(simulated=2000, bootstrap=10, top=20)
    analysis = analyse(names, weights, scores["target"], rng.dirichlet([1, 1, 1], 2000), config, seed=0)
    analysis["cmr"] = critical_mixture_ratio(weights[:, 1], scores["general"], scores["b"], 0.05) | {
        "domain": ["b"], "general_heldout": "general", "domain_heldout": "b", "ratios": weights[:, 1].tolist()}
    return write_sweep_report(summary, analysis, directory)["html"]


def test_sweep_report_plots_render_in_chromium(tmp_path):
    seen = assert_plots_visible(synthetic_sweep_report(tmp_path / "report"), tmp_path, minimum_images=4)
    assert seen["headings"][:3] == ["Mixture sweep", "Summary", "Runs"]


def test_run_report_plots_render_in_chromium(tmp_path):
    from gristmill.pipeline.reports.run_report import write_run_report
    from tests.test_run_report import build_small_run

    paths = write_run_report(build_small_run(tmp_path / "run"), tmp_path / "report")
    seen = assert_plots_visible(paths["html"], tmp_path, minimum_images=4)
    assert {"Funnel", "Distributions", "Sources", "Timings"} <= set(seen["headings"])


def test_ablation_report_plots_render_in_chromium(tmp_path):
    from gristmill.pipeline.reports.ablation_report import SECTIONS, write_ablation_report
    from tests.test_ablation_report import synthetic_ablation

    paths = write_ablation_report(synthetic_ablation(), tmp_path / "report")
    seen = assert_plots_visible(paths["html"], tmp_path, minimum_images=4)
    assert seen["headings"] == ["Ablation: web-recipe", *SECTIONS]
