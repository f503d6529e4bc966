"""Regenerate the PNG figures of README.md and docs/ (docs/img/*.png) from the committed data.

    .venv/bin/python docs/figures.py                 # all three
    .venv/bin/python docs/figures.py --only front    # front, replay, reuse (comma list)

Each figure is what a dsearch command writes as plotly HTML, screenshot in headless Debian chromium
(/usr/bin/chromium + /usr/bin/chromedriver, as tests/test_browser.py drives it) and saved as a palette PNG:

- img/front.png: `dsearch pareto` on a copy of the committed table studies/fashion_table (val_acc against params);
- img/replay-hypervolume.png: `dsearch replay studies/fashion_table --space spaces/fashion_replay.yaml --seeds 50
  --html ...` (14 methods x 50 seeds, about 5 minutes on 2 cores); bench/results/replay.html is used as is when it
  exists (the same command wrote it), unless --rebuild;
- img/reuse-fig5.png: `dsearch reuse` of DenseNet-BC L=40 k=12 trained by `dsearch train` on the table's data
  (Fashion-MNIST, 1,200 training and 1,000 validation images, 12 epochs; 399 s on 2 busy cores).

Intermediate files go to --work (default: the system's temp folder), which is reused on the next call, so a
trained network is trained once. Nothing is written into studies/ or bench/.
"""

from __future__ import annotations

import argparse
import gzip
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MAX_BYTES = 250_000
REUSE_NET = ["--set", "variant=densenet-bc", "--set", "depth=40", "--set", "growth_rate=12"]


def dsearch(*args: str) -> None:
    """Run a dsearch command with this interpreter, from the repository root (as the docs write them)."""
    print("$ dsearch " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "dsearch", *args], cwd=ROOT, check=True)


def browser(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--enable-unsafe-swiftshader", "--hide-scrollbars",
                 "--force-device-scale-factor=1", f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def screenshot(page: Path, ids: list[str], out: Path, width: int = 1100, height: int = 1400,
               hide: str = "") -> None:
    """Open page, wait until the plotly divs in ids are drawn, crop the screenshot to their union, save as PNG."""
    from PIL import Image
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser(width, height)
    try:
        driver.set_page_load_timeout(60)
        driver.get(page.as_uri())
        drawn = "return Array.from(arguments[0]).every(id => document.getElementById(id)?._fullLayout)"
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(drawn, ids))
        if hide:   # CSS selectors of what is not part of the figure (headings, text above it)
            driver.execute_script("document.querySelectorAll(arguments[0]).forEach(e => e.style.display = 'none')",
                                  hide)
        driver.execute_script("document.querySelectorAll('.modebar').forEach(e => e.style.display = 'none');"
                              "document.getElementById(arguments[0]).scrollIntoView();", ids[0])
        box = driver.execute_script(
            "const r = Array.from(arguments[0]).map(id => document.getElementById(id).getBoundingClientRect());"
            "return [Math.min(...r.map(b => b.left)), Math.min(...r.map(b => b.top)),"
            "        Math.max(...r.map(b => b.right)), Math.max(...r.map(b => b.bottom))];", ids)
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    image = Image.open(io.BytesIO(png)).convert("RGB").crop(tuple(round(v) for v in box))
    out.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    size = out.stat().st_size
    print(f"{out.relative_to(ROOT)}: {image.width}x{image.height}, {size:,} bytes")
    if size > MAX_BYTES:
        raise SystemExit(f"{out} is {size:,} bytes, over {MAX_BYTES:,}")


def front(work: Path) -> None:
    """`dsearch pareto` on a copy of studies/fashion_table (its study.db.gz unpacked there)."""
    study = work / "fashion_table"
    shutil.rmtree(study, ignore_errors=True)
    study.mkdir(parents=True)
    shutil.copy(ROOT / "studies/fashion_table/space.yaml", study)
    with gzip.open(ROOT / "studies/fashion_table/study.db.gz") as src, open(study / "study.db", "wb") as dst:
        shutil.copyfileobj(src, dst)
    dsearch("pareto", str(study))
    screenshot(study / "pareto.html", ["pair-params-val_acc"], IMG / "front.png", width=1000)


def replay(work: Path, rebuild: bool) -> None:
    """Hypervolume against simulated time, 14 methods x 50 seeds on the committed table."""
    page = ROOT / "bench/results/replay.html"
    if rebuild or not page.is_file():
        page = work / "replay.html"
        dsearch("replay", "studies/fashion_table", "--space", "spaces/fashion_replay.yaml", "--seeds", "50",
                "--html", str(page))
    screenshot(page, ["replay-hypervolume"], IMG / "replay-hypervolume.png", width=1100, height=800)


def reuse(work: Path) -> None:
    """The paper's Fig. 5 for DenseNet-BC L=40 k=12 trained on the committed table's data."""
    run = work / "bc40"
    if not (run / "checkpoint.pt").is_file():
        dsearch("train", "--dataset", "fashion_mnist", "--subset", "1200", "--epochs", "12", *REUSE_NET,
                "--set", "data.val_size=1000", "--out", str(run))
    dsearch("reuse", str(run / "checkpoint.pt"), "--out", str(work / "reuse"))
    screenshot(work / "reuse" / "checkpoint-reuse.html", ["reuse-block-1", "reuse-block-2", "reuse-block-3"],
               IMG / "reuse-fig5.png", width=1600, height=1000, hide="h1, p, ul")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="front,replay,reuse", help="comma list of front, replay, reuse")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dsearch-figures")
    parser.add_argument("--rebuild", action="store_true", help="rerun the replay even if bench/results has it")
    args = parser.parse_args()
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        raise SystemExit("needs Debian chromium + chromium-driver (make browser)")
    args.work.mkdir(parents=True, exist_ok=True)
    for name in args.only.split(","):
        {"front": lambda: front(args.work), "replay": lambda: replay(args.work, args.rebuild),
         "reuse": lambda: reuse(args.work)}[name.strip()]()


if __name__ == "__main__":
    main()
