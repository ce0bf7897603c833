"""Checkpoints that survive a kill at any moment and a change of world size: rank 0 writes to a
temporary file and renames it into place; the newest complete file wins on resume."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"^step-(\d{9})\.pt$")


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step-{step:09d}.pt"


def newest(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.iterdir() if _NAME.match(p.name))
    return found[-1] if found else None


def save(folder: Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(folder, step)
    tmp = final.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(final)
    for old in sorted(p for p in folder.iterdir() if _NAME.match(p.name))[:-keep]:
        old.unlink(missing_ok=True)
    return final


def load(path: Path) -> dict[str, Any]:
    """Tensors, numbers, strings and containers only: whoever can write the checkpoint volume
    must not be able to run code in every rank that resumes (torch's unpickler refuses any other
    object)."""
    return dict(torch.load(path, map_location="cpu", weights_only=True))
