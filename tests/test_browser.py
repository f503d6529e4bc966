"""The Pareto HTML in headless Debian chromium: renders offline, no console errors, one SVG marker per point drawn
(the Pareto pairs, and the rung panels: one marker per full-budget trial and rung)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from dsearch.analysis.paper import PaperPoint
from dsearch.analysis.plots import compute_plot_data, objective_pairs, paper_values, render_html
from dsearch.analysis.report import rung_correlations
from dsearch.analysis.search_figures import build_figures

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="needs Debian chromium + chromium-driver at /usr/bin/chromium and /usr/bin/chromedriver "
               "(apt-get install chromium chromium-driver)",
    ),
]

PAPER = (
    PaperPoint("densenet40_k12", 0.9476, 1_019_722, 264_812_928),
    PaperPoint("densenet_bc100_k12", 0.9549, 769_162, 287_929_692),
)


def small_trials() -> pd.DataFrame:
    """Six trials: 0, 2, 4 on the front, 1 and 3 dominated, 5 pruned."""
    return pd.DataFrame({
        "trial": [0, 1, 2, 3, 4, 5],
        "state": ["COMPLETE", "COMPLETE", "COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"],
        "val_acc": [0.91, 0.89, 0.94, 0.90, 0.95, 0.60],
        "params": [5e5, 9e5, 1.2e6, 2.5e6, 7e6, 2e5],
        "macs": [1.5e8, 3e8, 3.2e8, 6e8, 1.8e9, 5e7],
        "epochs_trained": [3, 3, 3, 3, 3, 1],
        "curve": [[0.6, 0.85, 0.91], [0.5, 0.8, 0.89], [0.7, 0.9, 0.94], [0.6, 0.8, 0.9],
                  [0.7, 0.92, 0.95], [0.6]],
        "model.growth_rate": [12, 12, 24, 24, 40, 12],
        "model.compression": [0.5, 1.0, 0.5, 1.0, 0.5, 0.5],
    })


def _driver(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # with the Service path: selenium-manager never runs
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--enable-unsafe-swiftshader", "--window-size=1280,3600",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def _render(page: Path, ids: list[str], tmp_path: Path, screenshot_name: str, read):
    """Open page in headless chromium, wait until every plot div in ids has rendered, return read(driver), the
    screenshot's path ($DSEARCH_ARTIFACTS, else tmp_path) and the browser's SEVERE console entries."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _driver(tmp_path / "profile")
    try:
        driver.set_page_load_timeout(20)
        driver.get(page.as_uri())
        rendered = "return Array.from(arguments[0]).every(id => document.getElementById(id)?._fullLayout)"
        WebDriverWait(driver, 15).until(lambda d: d.execute_script(rendered, ids))
        seen = read(driver)
        artifacts = Path(os.environ.get("DSEARCH_ARTIFACTS") or tmp_path)
        artifacts.mkdir(parents=True, exist_ok=True)
        screenshot = artifacts / screenshot_name
        driver.save_screenshot(str(screenshot))
        print(f"screenshot: {screenshot}")
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    finally:
        driver.quit()
    return seen, screenshot, severe


def test_pareto_html_renders_every_point_without_console_errors(tmp_path):
    rungs = rung_correlations(small_trials(), [1, 2], 3)
    data = compute_plot_data(small_trials(), paper=PAPER, rungs=rungs)
    figures = build_figures(data)
    page = tmp_path / "pareto.html"
    page.write_text(render_html(figures), encoding="utf-8")
    drawn = len(data.front.trials) + len(data.dominated.trials) + len(data.excluded.trials)
    expected = {
        f"pair-{data.objectives[x].metric}-{data.objectives[y].metric}": drawn + len(paper_values(data, (x, y))[0])
        for x, y in objective_pairs(data.objectives)
    }
    assert (data.front.trials, data.dominated.trials, data.excluded.trials) == ((0, 2, 4), (1, 3), (5,))
    assert list(expected.values()) == [8, 8, 8]
    expected["rungs"] = sum(len(r.trials) for r in rungs)  # the 5 COMPLETE trials, in each of 2 panels
    assert expected["rungs"] == 10 and list(figures)[-1] == "rungs"

    def count(driver):
        return {key: driver.execute_script(
            "return document.querySelectorAll(`#${arguments[0]} .scatterlayer .point`).length", key)
            for key in expected}

    counts, screenshot, severe = _render(page, list(figures), tmp_path, "pareto.png", count)

    assert severe == []
    assert counts == expected
    assert screenshot.stat().st_size > 10_000


def test_reuse_html_of_a_quickstart_sized_trained_network_draws_one_heatmap_per_block(tmp_path):
    """The quickstart's seed network (DenseNet-BC L=16 k=8, 1×28×28, 10 classes) after one short epoch."""
    from dsearch.analysis.reuse import FIGURE_ID, write_plotly_js, write_reuse
    from dsearch.training.config import DataConfig, RunConfig, TrainConfig
    from dsearch.training.data import load_data
    from dsearch.training.loop import fit

    fashion = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists()
    data = (DataConfig(name="fashion_mnist", val_size=100, train_subset=128, val_subset=50) if fashion else
            DataConfig(name="synthetic", synthetic_channels=1, synthetic_image_size=28, synthetic_size=128,
                       val_size=50))
    run = RunConfig(model=dict(variant="densenet-bc", depth=16, growth_rate=8, compression=0.5), data=data,
                    train=TrainConfig(epochs=1, batch_size=32, device="cpu"))   # 4 SGD steps
    assert (run.model.in_channels, run.model.num_classes, run.model.block_layers) == (1, 10, (2, 2, 2))
    model = fit(run, load_data(run.data)).model.cpu().eval()
    _, page, result = write_reuse(model, tmp_path, "reuse")
    ids = [FIGURE_ID.format(b.block) for b in result.blocks]
    assert ids == ["reuse-block-1", "reuse-block-2", "reuse-block-3"]

    def read(driver):
        heatmaps = driver.execute_script(
            "return Array.from(arguments[0]).map(id => document.querySelectorAll(`#${id} .heatmaplayer image`)"
            ".length)", ids)
        traces = driver.execute_script(
            "return Array.from(document.querySelectorAll('.js-plotly-plot'))"
            ".filter(d => d.data.some(t => t.type === 'heatmap')).length")
        return heatmaps, traces, driver.execute_script("return document.getElementById('reuse-findings').innerText")

    (heatmaps, traces, findings), screenshot, severe = _render(page, ids, tmp_path, "reuse.png", read)
    # The page `dsearch pareto` links: the same figure, plotly.js from the folder's one plotly.min.js.
    _, linked, _ = write_reuse(model, tmp_path / "linked", "trial-3", include_plotlyjs="directory")
    write_plotly_js(tmp_path / "linked")
    (linked_heatmaps, *_), _, linked_severe = _render(linked, ids, tmp_path, "reuse-linked.png", read)

    assert severe == [] and linked_severe == []
    assert heatmaps == linked_heatmaps == [1, 1, 1] and traces == len(result.blocks) == 3
    assert "transition row:" in findings and "classifier focus:" in findings
    assert screenshot.stat().st_size > 10_000


def test_replay_html_draws_a_median_line_and_a_band_per_method(tmp_path):
    """`dsearch replay --html`: hypervolume share against simulated time, one line and one band per method."""
    import numpy as np

    from dsearch.analysis.replay import FIGURE_ID, build_figure, write_html

    grid = np.linspace(0, 100, 50)
    curves = {name: np.stack([np.clip(grid / (100 * k) - 0.1, 0, 1), np.clip(grid / (100 * k), 0, 1),
                              np.clip(grid / (100 * k) + 0.1, 0, 1)]) for name, k in (("moasha", 1), ("asha", 2),
                                                                                          ("random", 3))}
    page = tmp_path / "replay.html"
    write_html(build_figure(grid, curves, "moasha", "replay"), page)

    def read(driver):
        return driver.execute_script(
            "const d = document.getElementById(arguments[0]);"
            "return [d.data.length, d.data.filter(t => t.fill === 'toself').length,"
            " d.data.filter(t => t.mode === 'lines').map(t => t.name),"
            " document.querySelectorAll(`#${arguments[0]} .scatterlayer .trace`).length]", FIGURE_ID)

    (traces, bands, lines, drawn), screenshot, severe = _render(page, [FIGURE_ID], tmp_path, "replay.png", read)
    assert severe == []
    assert (traces, bands, drawn) == (6, 3, 6)
    assert lines == ["moasha (default)", "asha", "random"]
    assert screenshot.stat().st_size > 10_000
