"""`dsearch model`: the stage table and totals of a DenseNet, as text or JSON."""

from __future__ import annotations

import json
from typing import Any, List, Optional

import typer

from ..errors import UserError, did_you_mean
from ..metrics import MACS, PARAMS
from ..net.config import ModelConfig
from ..net.cost import DTYPES, count_memory, format_bytes, stages
from ..net.presets import PRESETS, get_preset
from .app import app, parse_sets


def parse_input_size(text: str) -> tuple[int, int, int]:
    """'3x32x32' → (3, 32, 32)."""
    try:
        c, h, w = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise UserError(f"--input {text!r}: expected CxHxW, e.g. 3x32x32") from None
    if min(c, h, w) < 1:
        raise UserError(f"--input {text!r}: every size must be ≥ 1")
    return c, h, w


def model_config(preset: str | None, overrides: dict[str, Any]) -> ModelConfig:
    """A preset with overrides, or a config from overrides alone (keys may carry `model.`)."""
    fields = {}
    for key, value in overrides.items():
        if key.startswith("model."):
            key = key[len("model."):]
        elif "." in key:
            raise UserError(f"--set {key}: only model.* keys apply to `dsearch model`")
        fields[key] = value
    unknown = sorted(set(fields) - set(ModelConfig.model_fields))
    if unknown:
        raise UserError(f"--set {unknown[0]}: unknown model field (fields: {', '.join(ModelConfig.model_fields)})"
                        f"{did_you_mean(unknown[0], ModelConfig.model_fields)}")
    if preset is None:
        if not fields:
            raise UserError("give a PRESET or --set options (e.g. --set variant=densenet-bc "
                            "--set depth=100 --set growth_rate=12); `dsearch model --list` lists presets")
        return ModelConfig(**fields)
    return get_preset(preset).with_overrides(**fields)


def summary(config: ModelConfig, input_size: tuple[int, int, int] | None = None, *, batch: int = 64,
            dtype: str = "fp32", device: str = "cuda") -> dict:
    """The config, the stage table and the totals (params, MACs, FLOPs = 2 × MACs), and training memory at a batch."""
    size = tuple(input_size or config.default_input_size())
    rows = stages(config, size)
    params = sum(s.params for s in rows)
    macs = sum(s.macs for s in rows)
    mem = count_memory(config, size, batch, dtype, device=device, channels_last=device == "cuda")
    table = [{**s._asdict(), "saved_bytes": saved} for s, saved in zip(rows, mem.stage_saved)]
    memory = {"batch_size": batch, "dtype": dtype, "device": device, "memory_efficient": config.memory_efficient,
              "saved_bytes": mem.saved_bytes, "state_bytes": mem.state_bytes, "peak_bytes": mem.peak_bytes}
    return {"config": config.model_dump(mode="json"), "input_size": list(size),
            "stages": table, PARAMS: params, MACS: macs, "flops": 2 * macs, "memory": memory}


def describe_command(preset: str | None, overrides: dict, input_text: str | None, as_json: bool,
                     list_presets: bool, *, batch: int = 64, dtype: str = "fp32", memory_efficient: bool = False,
                     device: str = "cuda") -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if list_presets:
        for name in PRESETS:
            console.print(name)
        return
    if batch < 1:
        raise UserError(f"--batch {batch}: must be ≥ 1")
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}{did_you_mean(dtype, DTYPES)}")
    if device not in ("cuda", "cpu"):
        raise UserError(f"--device {device!r}: expected cuda or cpu")
    config = model_config(preset, overrides)
    if memory_efficient:
        config = config.with_overrides(memory_efficient=True)
    info = summary(config, parse_input_size(input_text) if input_text else None, batch=batch, dtype=dtype,
                   device=device)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    c = config
    title = (f"{preset or 'DenseNet'}: {c.variant or ''} L={c.depth} k={c.growth_rate} "
             f"blocks={list(c.block_layers)} θ={c.compression} stem={c.stem}").replace("  ", " ")
    table = Table(title=title)
    mem = info["memory"]
    for col in ("stage", "output", "layers", "channels in → out", "params", "MACs", "saved for backward"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for s in info["stages"]:
        h, w = s["size"]
        table.add_row(s["name"], f"{h}×{w}", str(s["layers"]), f"{s['in_channels']} → {s['out_channels']}",
                      f"{s['params']:,}", f"{s['macs']:,}", format_bytes(s["saved_bytes"]))
    console.print(table)
    size = "x".join(map(str, info["input_size"]))
    console.print(f"params: {info[PARAMS]:,}   MACs (multiply-accumulates, batch 1, input {size}): "
                  f"{info[MACS]:,}   FLOPs (2 × MACs): {info['flops']:,}")
    path = "memory-efficient" if mem["memory_efficient"] else "normal"
    console.print(f"training memory (batch {mem['batch_size']}, {mem['dtype']}, {path} path, {mem['device']}): "
                  f"saved for backward {format_bytes(mem['saved_bytes'])}, parameters + gradients + momentum "
                  f"{format_bytes(mem['state_bytes'])}, peak ≈ {format_bytes(mem['peak_bytes'])}")


@app.command()
def model(
    preset: Optional[str] = typer.Argument(None, help="preset name (see `dsearch model --list`)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="key=value model override (repeatable)"),
    input: Optional[str] = typer.Option(None, "--input", help="input size CxHxW, e.g. 3x32x32"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    list_: bool = typer.Option(False, "--list", help="list the presets"),
    batch: int = typer.Option(64, "--batch", help="training batch size for the memory estimate"),
    dtype: str = typer.Option("fp32", "--dtype", help="autocast dtype for the memory estimate: fp32, bf16, fp16"),
    memory_efficient: bool = typer.Option(False, "--memory-efficient",
                                          help="the memory-efficient path (recompute concat/BN/ReLU in backward)"),
    device: str = typer.Option("cuda", "--device", help="cuda (channels_last) or cpu (contiguous, oneDNN)"),
) -> None:
    """Architecture, channel schedule, params, MACs and training memory of a DenseNet."""
    describe_command(preset, parse_sets(set_), input, as_json, list_, batch=batch, dtype=dtype,
                     memory_efficient=memory_efficient, device=device)
