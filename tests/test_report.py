"""The shared report writer: self-contained HTML with real embedded plots, Markdown with figure files, JSON."""

import json

import matplotlib.pyplot as plt
import pytest

from gristmill.pipeline.engine.report import Report, check_html, format_cell


def build_report() -> Report:
    report = Report("Funnel", data={"documents": 1200})
    report.section("Stages").table([{"stage": "clean", "in": 1200, "out": 1000, "share": 0.8333333}])
    figure, axes = plt.subplots(figsize=(4, 3))
    axes.bar(["in", "out"], [1200, 1000])
    report.section("Plots").figure(figure, "Documents in and out").text("Counts < 5 | pipes escaped")
    return report


def test_report_writes_html_markdown_and_json(tmp_path):
    paths = build_report().write(tmp_path)
    checked = check_html(paths["html"])
    assert checked["headings"] == ["Funnel", "Stages", "Plots"]
    assert len(checked["images"]) == 1 and checked["images"][0][0] >= 300
    page = paths["html"].read_text()
    assert "1,200" in page and "0.8333" in page and "Counts &lt; 5" in page
    markdown = paths["markdown"].read_text()
    assert "| stage | in | out | share |" in markdown and "| clean | 1,200 | 1,000 | 0.8333 |" in markdown
    assert "![Documents in and out](figures/figure-01-documents-in-and-out.png)" in markdown
    assert (tmp_path / "figures" / "figure-01-documents-in-and-out.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads(paths["json"].read_text()) == {"title": "Funnel", "documents": 1200}


def test_check_html_rejects_missing_or_external_images(tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><h1>x</h1><img src='plot.png'></body></html>")
    with pytest.raises(ValueError, match="not an embedded PNG"):
        check_html(broken)
    external = tmp_path / "external.html"
    external.write_text("<html><head><script src='https://cdn.example/x.js'></script></head></html>")
    with pytest.raises(ValueError, match="external"):
        check_html(external)


@pytest.mark.parametrize(("value", "shown"), [(1234567, "1,234,567"), (0.000123456, "0.0001235"),
                                              (float("nan"), "–"), (None, ""), (True, "True"), ("a", "a")])
def test_format_cell(value, shown):
    assert format_cell(value) == shown


def test_a_markdown_table_cell_with_pipes_and_line_breaks_stays_one_row(tmp_path):
    report = Report("Snippets")
    report.section("Pairs").table([{"duplicate": "SELECT a | b\nFROM t;\r\n-- end", "cosine": 0.97}])
    markdown = report.write(tmp_path)["markdown"].read_text()
    assert "| SELECT a \\| b FROM t; -- end | 0.97 |" in markdown.splitlines()
