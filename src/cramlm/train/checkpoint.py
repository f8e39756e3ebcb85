"""Checkpoints that survive a crash at any moment, and loading a trained model back.

A checkpoint is a directory `checkpoints/step-N/` with `model.safetensors` (weights), `optimizer.pt` (optimizer
and grad-scaler state), `trainer.pt` (RNG states, data-loader position: everything else a bit-exact resume needs)
and `state.json` (step, budget spent, guard counters and a SHA-256 of every other file). It is written under a
temporary name and renamed into place, so a directory named `step-N` is complete unless the disk lied; the checksums
catch that, and loading falls back to the previous checkpoint with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from cramlm.errors import CramlmError

FORMAT = 1
WEIGHTS = "model.safetensors"
STATE = "state.json"


# ---------------------------------------------------------------- weights


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """Safetensors of a state dict; tensors sharing storage (tied embeddings) are stored once, as aliases."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    save_file(tensors, str(path), metadata={"format": str(FORMAT), "aliases": json.dumps(aliases)})


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict written by `save_weights`, aliases expanded."""
    with safe_open(str(path), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    state = load_file(str(path))
    for name, target in aliases.items():
        state[name] = state[target]
    return state


# ---------------------------------------------------------------- checkpoints


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete-looking checkpoint dirs of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def save_checkpoint(
    run_dir: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    trainer_state: dict[str, Any],
    meta: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write `checkpoints/step-N/` atomically, then delete all but the newest `keep` checkpoints."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(model_state, tmp / WEIGHTS)
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(trainer_state, tmp / "trainer.pt")
    files = {}
    for p in sorted(tmp.iterdir()):
        with open(p, "rb+") as f:
            os.fsync(f.fileno())
        files[p.name] = {"sha256": _sha256(p), "bytes": p.stat().st_size}
    state = {"format": FORMAT, "step": step, "files": files, **meta}
    (tmp / STATE).write_text(json.dumps(state, indent=1))
    with open(tmp / STATE, "rb+") as f:
        os.fsync(f.fileno())
    if final.exists():  # a step re-done after falling back from a corrupt checkpoint
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify(path: Path) -> str | None:
    """Why a checkpoint dir is unusable, or None when every file matches its size and checksum."""
    try:
        state = json.loads((Path(path) / STATE).read_text())
        files = state["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable {STATE} ({type(e).__name__})"
    for name in (WEIGHTS, "optimizer.pt", "trainer.pt"):
        if name not in files:
            return f"{name} is not listed in {STATE}"
    for name, expected in files.items():
        p = Path(path) / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != expected["bytes"]:
            return f"{name} is truncated ({p.stat().st_size} of {expected['bytes']} bytes)"
        if _sha256(p) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that verifies; each newer broken one is reported with a warning and skipped."""
    for path in reversed(checkpoint_dirs(run_dir)):
        problem = verify(path)
        if problem is None:
            return path
        warnings.warn(f"checkpoint {path} is corrupt: {problem}; using the previous one", stacklevel=2)
    return None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A verified checkpoint's parts: `model`, `optimizer`, `trainer` and `state` (the JSON)."""
    problem = verify(path)
    if problem is not None:
        raise CramlmError(f"checkpoint {path} is corrupt: {problem}")
    path = Path(path)
    return {
        "model": load_weights(path / WEIGHTS),
        "optimizer": torch.load(path / "optimizer.pt", map_location=map_location, weights_only=True),
        "trainer": torch.load(path / "trainer.pt", map_location="cpu", weights_only=True),
        "state": json.loads((path / STATE).read_text()),
    }


# ---------------------------------------------------------------- trained models


def save_final(run_dir: Path, model_state: dict[str, torch.Tensor], cfg: Any) -> Path:
    """`final/model.safetensors` + `final/config.yaml`: what eval and export read."""
    final = Path(run_dir) / "final"
    tmp = Path(run_dir) / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model_state, tmp / WEIGHTS)
    cfg.save(tmp / "config.yaml")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _weights_and_config(path: Path) -> tuple[Path, Path]:
    """Find the weights and the config for a run dir, its `final/`, or one checkpoint dir."""
    path = Path(path)
    if (path / "final" / WEIGHTS).is_file():
        path = path / "final"
    elif not (path / WEIGHTS).is_file():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CramlmError(f"{path} holds no trained model (no final/{WEIGHTS} and no valid checkpoint)")
        path = latest
    for candidate in (path / "config.yaml", path.parent / "config.yaml", path.parent.parent / "config.yaml"):
        if candidate.is_file():
            return path / WEIGHTS, candidate
    raise CramlmError(f"no config.yaml found next to {path / WEIGHTS}")


def load_model(run_dir_or_checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """The trained model (final weights, else the latest valid checkpoint) in eval mode, and its RunConfig."""
    from cramlm.config import load_run_config
    from cramlm.models.registry import build_model

    weights, config = _weights_and_config(Path(run_dir_or_checkpoint))
    cfg = load_run_config(config)
    model = build_model(cfg.model)
    try:
        model.load_state_dict(load_weights(weights))
    except (SafetensorError, RuntimeError) as e:
        raise CramlmError(f"cannot load {weights}: {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), cfg
