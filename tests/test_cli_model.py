"""`dsearch model`: the stage table, JSON totals, and one-line errors with exit status 2."""

import json
import subprocess
import sys

import pytest

from dsearch.cli import main


def run(*args):
    proc = subprocess.run([sys.executable, "-m", "dsearch.cli", *args], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def test_model_json_gives_params_macs_and_flops(capsys):
    assert main(["model", "densenet_bc100_k12", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["params"], info["macs"], info["flops"]) == (769_162, 287_929_692, 575_859_384)
    assert [s["name"] for s in info["stages"]][1:3] == ["denseblock1", "transition1"]


def test_model_from_set_options_matches_the_preset(capsys):
    assert main(["model", "--set", "variant=densenet-bc", "--set", "depth=100", "--set", "growth_rate=12",
                 "--input", "3x32x32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 769_162


def test_model_table_labels_macs_and_flops():
    code, out, _ = run("model", "densenet121")
    assert code == 0
    assert "7,978,856" in out and "2,834,161,664" in out and "FLOPs (2 × MACs): 5,668,323,328" in out


@pytest.mark.parametrize("args, text", [
    (["model", "densenet122"], "unknown preset 'densenet122'"),
    (["model", "--set", "variant=densenet-bc", "--set", "depth=101"], "model.depth: L=101 doesn't fit"),
    (["model", "--set", "grwth_rate=12"], "--set grwth_rate: unknown model field (fields: stem, block_layers, growth_rate"),
    (["model", "--set", "grwth_rate=12"], "; did you mean growth_rate?"),
    (["model", "densenet121", "--input", "3x16x16"], "transition3 (after denseblock3)"),
    (["model", "densenet121", "--input", "3by16"], "--input '3by16': expected CxHxW"),
    (["model", "--nope"], "No such option: --nope"),
    (["model"], "give a PRESET or --set options"),
])
def test_bad_input_is_one_line_exit_2_no_traceback(args, text):
    code, out, err = run(*args)
    assert code == 2
    assert err.startswith("dsearch: error: ") and text in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_model_json_gives_training_memory_of_the_chosen_path(capsys):
    from dsearch.net.cost import count_memory

    assert main(["model", "densenet_bc100_k12", "--batch", "64", "--json"]) == 0
    normal = json.loads(capsys.readouterr().out)
    assert main(["model", "densenet_bc100_k12", "--batch", "64", "--memory-efficient", "--dtype", "bf16",
                 "--json"]) == 0
    efficient = json.loads(capsys.readouterr().out)
    expected = count_memory("densenet_bc100_k12", batch_size=64, device="cuda", channels_last=True)
    assert normal["memory"]["saved_bytes"] == expected.saved_bytes
    assert (normal["memory"]["state_bytes"], normal["memory"]["peak_bytes"]) == expected[1:3]
    assert sum(s["saved_bytes"] for s in normal["stages"]) == expected.saved_bytes
    assert efficient["memory"]["memory_efficient"] and efficient["memory"]["dtype"] == "bf16"
    assert efficient["memory"]["saved_bytes"] == count_memory(
        "densenet_bc100_k12", batch_size=64, dtype="bf16", memory_efficient=True, device="cuda").saved_bytes
    # The efficient path in bf16 keeps under a tenth of what the normal path keeps in fp32.
    assert efficient["memory"]["saved_bytes"] < normal["memory"]["saved_bytes"] / 10


def test_model_table_has_a_training_memory_line():
    code, out, _ = run("model", "densenet40_k12", "--batch", "32", "--device", "cpu")
    assert code == 0
    line = " ".join(out.split())
    assert "training memory (batch 32, fp32, normal path, cpu): saved for backward" in line and "peak ≈" in line


@pytest.mark.parametrize("args, text", [
    (["model", "densenet40_k12", "--batch", "0"], "--batch 0: must be ≥ 1"),
    (["model", "densenet40_k12", "--dtype", "bf61"], "--dtype 'bf61': expected one of fp32, bf16, fp16"),
    (["model", "densenet40_k12", "--device", "tpu"], "--device 'tpu': expected cuda or cpu"),
])
def test_bad_memory_options_are_one_line_errors(args, text, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("dsearch: error: ") and text in err and err.count("\n") == 1
