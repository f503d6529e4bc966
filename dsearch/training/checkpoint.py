"""Checkpoints of a run: written atomically, read with weights_only=True, and the RNG state they carry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import torch


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a temp file in the same folder, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: Path | BinaryIO, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint written by fit (a path or an open binary file), loaded with weights_only=True."""
    return torch.load(path if hasattr(path, "read") else Path(path), map_location=device, weights_only=True)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
