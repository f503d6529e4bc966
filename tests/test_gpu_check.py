"""bench/gpu_check.py --dry-run: the sections of the one-call GPU check run on a CPU-only machine and record sound
numbers (the GPU run itself is the device check's, with the same code and bigger sizes).

The search section is a `dsearch run` of the space built here (search_space) as a subprocess, as the search tests
run theirs: its dry run (~21 s, nearly all Ray's start) is left to `python bench/gpu_check.py --dry-run`, and the space
it would run is checked here."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"
DSEARCH_SETTINGS = ["fp32", "bf16", "fp32 + channels_last", "bf16 + channels_last", "compile (bf16 + channels_last)",
                    "memory_efficient (bf16 + channels_last)"]
TORCHVISION_SETTINGS = ["fp32", "bf16 + channels_last", "compile (bf16 + channels_last)"]
SECTIONS = ["throughput", "packing", "memory"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--sections", ",".join(SECTIONS)],
                          capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_every_section_ran_without_error(dry_run):
    result, stdout = dry_run
    for name in SECTIONS:
        assert name in result, name
        assert "error" not in result[name], (name, result[name]["error"])
    assert result["environment"]["device"] == "cpu" and result["environment"]["dry_run"]
    assert 0 < result["total_wall_s"] < 300
    assert "total" in stdout.splitlines()[-1]


def test_throughput_has_a_row_for_every_network_implementation_and_setting(dry_run):
    rows = dry_run[0]["throughput"]["rows"]
    cells = {(r["net"], r["impl"], r["setting"]): r for r in rows}
    expected = [(net, "dsearch", s) for net in ("bc100", "quickstart") for s in DSEARCH_SETTINGS] + \
               [(net, "torchvision", s) for net in ("bc100", "quickstart") for s in TORCHVISION_SETTINGS]
    assert sorted(cells) == sorted(expected)
    for key, r in cells.items():
        assert "error" not in r, (key, r["error"])
        if "skipped" in r:                      # only bc100's compile on the CPU, and it says why
            assert key[0] == "bc100" and key[2].startswith("compile") and "CPU" in r["skipped"], key
        else:
            assert r["images_per_s"] > 0 and r["ms_per_step"] > 0, key
    assert cells[("quickstart", "dsearch", "compile (bf16 + channels_last)")]["compile_backend"] == "eager"
    assert "images_per_s" in cells[("quickstart", "torchvision", "compile (bf16 + channels_last)")]


def test_packing_reports_one_and_two_processes(dry_run):
    packing = dry_run[0]["packing"]
    rows = {r["processes"]: r for r in packing["rows"]}
    assert sorted(rows) == [1, 2]
    for n, r in rows.items():
        assert r["aggregate_images_per_s"] > 0
        assert len(r["per_process"]) == n and all(p["images_per_s"] > 0 for p in r["per_process"])
        assert sum(p["images_per_s"] for p in r["per_process"]) == pytest.approx(r["aggregate_images_per_s"])
    assert packing["ratio_2_vs_1"] > 0 and packing["target_4_vs_1"] == 2.5


def test_memory_saved_bytes_are_exact_and_the_peak_within_ten_percent(dry_run):
    memory = dry_run[0]["memory"]
    rows = memory["rows"]
    assert memory["device"] == "cpu" and len(rows) == 4          # 2 networks × normal / efficient, fp32
    assert {r["memory_efficient"] for r in rows} == {False, True}
    for r in rows:
        assert r["saved_equal"] and r["saved_predicted"] == r["saved_measured"] > 0, r
        assert abs(r["peak_ratio"] - 1) < 0.10, r
    assert memory["all_saved_equal"]


def test_the_search_sections_dry_run_space_is_a_valid_one_trial_cpu_search(tmp_path):
    import argparse
    import importlib.util

    from dsearch.search.io import load_space

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    path, described = gpu_check.search_space(argparse.Namespace(dry_run=True, search_samples=1), tmp_path)
    space = load_space(path)          # the checks `dsearch run` makes before it starts
    assert (space.resources.cpu, space.resources.gpu) == (1, 0) and space.data.name == "synthetic"
    assert (space.budget.num_samples, space.budget.max_epochs, space.budget.max_concurrent_trials) == (1, 1, 1)
    assert described["budget"]["num_samples"] == 1 and "dry run" in described["data"]
