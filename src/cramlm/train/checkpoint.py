"""Checkpoints that survive a crash at any moment, resume with any number of processes, and load back for eval.

A checkpoint is a directory `checkpoints/step-N/` holding:

- the model and optimizer state as a `torch.distributed.checkpoint` (DCP) directory: `.metadata` plus one
  `__R_0.distcp` file per rank, in which each rank wrote only its own shards, keyed by parameter name, so no
  rank gathers the full state and any world size or strategy can read it back (one process included);
- `trainer.pt`: RNG states, the log window, the noise-scale estimate, the grad scaler (rank 0's);
- `state.json`: step, budget spent, data position, guard counters and a SHA-256 of every other file.

Every rank writes into `.step-N.tmp/`; rank 0 then checksums the files and renames the directory into place, so a
directory named `step-N` is complete unless the disk lied. The checksums catch that, and `latest_checkpoint`
falls back to the previous one with a warning. `final/model.safetensors` is the last checkpoint's weights
consolidated into one file, which eval and export read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.distributed.tensor.placement_types import _StridedShard

from cramlm.errors import CramlmError

FORMAT = 2
WEIGHTS = "model.safetensors"
STATE = "state.json"
TRAINER = "trainer.pt"
METADATA = ".metadata"  # written last by DCP: the sharded state is complete when it exists
# Flattened optimizer state is keyed per parameter name: ZeRO ranks hold disjoint keys, any world size can load it.
_OPTIM_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
_KERNEL = ("fused", "foreach")  # optimizer flags that belong to the reader, not to the writer


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


# ---------------------------------------------------------------- sharded model and optimizer state


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's module under a DDP wrapper (FSDP2 and TP modify the module in place)."""
    return getattr(model, "module", model)


def _local(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer that holds this rank's state: ZeRO-1 keeps it in `.optim`."""
    return getattr(optimizer, "optim", optimizer)


def _collective() -> bool:
    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    """A checkpoint written or read by one process is intended: no warning about it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    module = _unwrap(model)
    state: dict[str, Any] = {"model": get_model_state_dict(module)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(module, _local(optimizer), options=_OPTIM_OPTIONS)
    return state


def _gather_strided(state: dict[str, dict[str, Any]]) -> dict[tuple[str, str], DTensor]:
    """Replace strided shards (the fused tensor-parallel projections) by whole tensors, in place, and return the
    originals.

    DCP describes each shard as one box of the global tensor; a strided shard is several, so those tensors are
    stored whole (deduplicated across ranks) and split again after loading."""
    strided = {}
    for part, tensors in state.items():
        for key, value in tensors.items():
            if isinstance(value, DTensor) and any(isinstance(p, _StridedShard) for p in value.placements):
                strided[part, key] = value
                tensors[key] = value.full_tensor()
    return strided


def _sharded(path: Path) -> Path:
    """`path` when it holds DCP state, else a one-line error (a DeepSpeed checkpoint, a wrong directory)."""
    path = Path(path)
    if not (path / METADATA).is_file():
        raise CramlmError(f"{path} holds no sharded model state (no {METADATA}); a train.strategy=deepspeed "
                          f"checkpoint is read by DeepSpeed (its zero_to_fp32.py)")
    return path


@contextlib.contextmanager
def _loading(path: Path) -> Iterator[None]:
    """State that does not fit the model or optimizer (another size, vocabulary, optimizer) is a one-line error
    instead of DCP's traceback of every rank (a `CheckpointException` is not even an `Exception`)."""
    try:
        yield
    except CheckpointException as e:
        cause = next(iter(e.failures.values()), (e, None))[0]
        raise CramlmError(f"cannot load {path}: {_first_line(cause)}") from None
    except (RuntimeError, ValueError, KeyError) as e:
        raise CramlmError(f"cannot load {path}: {_first_line(e)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def write_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Sharded save of the model (and optimizer) into the directory `path`. Collective: every rank calls it and
    writes only its own shards; DCP's coordinator (rank 0) writes `.metadata` once all shards are on disk."""
    state = _state(model, optimizer)
    _gather_strided(state)
    with _quiet_single_process():
        dcp.save(state, checkpoint_id=Path(path), no_dist=not _collective())


def read_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load a `write_state` directory, written by any world size and strategy, into this rank's shards.
    Collective under torchrun."""
    path = _sharded(path)
    state = _state(model, optimizer)
    strided = _gather_strided(state)
    with _quiet_single_process(), _loading(path):
        dcp.load(state, checkpoint_id=path, no_dist=not _collective())
    for (part, key), like in strided.items():
        state[part][key] = distribute_tensor(state[part][key], like.device_mesh, like.placements)
    module = _unwrap(model)
    with _loading(path):
        set_model_state_dict(module, state["model"])
        if optimizer is not None:
            local = _local(optimizer)
            kernels = [{k: g[k] for k in _KERNEL if k in g} for g in local.param_groups]
            set_optimizer_state_dict(module, local, state["optim"], options=_OPTIM_OPTIONS)
            for group, kernel in zip(local.param_groups, kernels):
                group.update(kernel)


def _read_weights(path: Path, module: nn.Module) -> None:
    """This process alone reads the model part of a checkpoint into an unsharded `module` (rank 0 consolidating
    while the other ranks move on, or eval in one process)."""
    state = {"model": module.state_dict()}
    with _quiet_single_process(), _loading(path):
        dcp.load(state, checkpoint_id=_sharded(path), no_dist=True)
        module.load_state_dict(state["model"])


# ---------------------------------------------------------------- checkpoint directories


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file (or a directory's entries) to the disk; filesystems that cannot are left alone."""
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
    """Committed checkpoint dirs of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def begin(run_dir: Path, step: int) -> Path:
    """Rank 0: an empty staging directory for step `step` (a leftover of a crashed save is cleared)."""
    tmp = Path(run_dir) / "checkpoints" / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, step: int, trainer_state: dict[str, Any], meta: dict[str, Any], keep: int = 2) -> Path:
    """Rank 0, once every rank's `write_state` into `tmp` returned: add the trainer state and the checksums, rename
    `tmp` to `step-N`, and delete all but the newest `keep` checkpoints."""
    torch.save(trainer_state, tmp / TRAINER)
    files = {}
    for p in sorted(q for q in tmp.rglob("*") if q.is_file()):
        _fsync(p)
        files[str(p.relative_to(tmp))] = {"sha256": _sha256(p), "bytes": p.stat().st_size}
    (tmp / STATE).write_text(json.dumps({"format": FORMAT, "step": step, "files": files, **meta}, indent=1))
    _fsync(tmp / STATE)
    root = tmp.parent
    final = root / f"step-{step}"
    if final.exists():  # a step re-done after falling back from a corrupt checkpoint
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    for old in checkpoint_dirs(root.parent)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify(path: Path) -> str | None:
    """Why a checkpoint dir is unusable, or None when every file matches its size and checksum."""
    try:
        state = json.loads((Path(path) / STATE).read_text())
        files = state["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable {STATE} ({type(e).__name__})"
    if state.get("format") != FORMAT:
        return f"format {state.get('format')} (this cramlm reads format {FORMAT})"
    if TRAINER not in files:
        return f"{TRAINER} is not listed in {STATE}"
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


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's unsharded parts: `trainer` (trainer.pt) and `state` (state.json). The model and optimizer
    come from `read_state(path, ...)`. `path` is one that `latest_checkpoint` verified."""
    path = Path(path)
    return {"trainer": torch.load(path / TRAINER, map_location="cpu", weights_only=True),
            "state": json.loads((path / STATE).read_text())}


# ---------------------------------------------------------------- trained models


def save_final(run_dir: Path, model_state: dict[str, torch.Tensor], cfg: Any) -> Path:
    """`final/model.safetensors` + `final/config.yaml`, written atomically: what eval and export read."""
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


def consolidate(checkpoint: Path, run_dir: Path, cfg: Any, module: nn.Module) -> Path:
    """`final/` from a checkpoint's sharded weights, read by this process alone: one safetensors file, whatever
    the world size and strategy that wrote them. `module` is an unsharded instance of the model, typically built on
    the meta device (only its structure is used); `cfg` is the run's RunConfig."""
    module.to_empty(device="cpu")  # storage only: every persistent tensor is read from the checkpoint
    _read_weights(checkpoint, module)
    from cramlm.train.sparsity import apply_final_masks

    apply_final_masks(module, cfg)  # a sparse run's final/ holds the masked weights it asked for
    return save_final(run_dir, module.state_dict(), cfg)


def _find(path: Path) -> tuple[Path, Path]:
    """The weights (a safetensors file, or a checkpoint dir) and the config of a run dir, its `final/`, or one
    checkpoint dir."""
    path = Path(path)
    if (path / "final" / WEIGHTS).is_file():
        path = path / "final"
    elif not (path / WEIGHTS).is_file() and not (path / STATE).is_file():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CramlmError(f"{path} holds no trained model (no final/{WEIGHTS} and no valid checkpoint)")
        path = latest
    weights = path / WEIGHTS if (path / WEIGHTS).is_file() else path
    for candidate in (path / "config.yaml", path.parent / "config.yaml", path.parent.parent / "config.yaml"):
        if candidate.is_file():
            return weights, candidate
    raise CramlmError(f"no config.yaml found next to {path}")


def load_model(run_dir_or_checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """The trained model (final weights, else the latest valid checkpoint) in eval mode, and its RunConfig. A
    fine-tuned classifier dir (`finetuned/<task>/` of `eval glue`: its task.json names the labels) gives the
    classifier."""
    from cramlm.config import load_run_config
    from cramlm.models.encoder import EncoderForSequenceClassification
    from cramlm.models.registry import build_model

    weights, config = _find(Path(run_dir_or_checkpoint))
    cfg = load_run_config(config)
    task = weights.parent / "task.json"
    try:
        model = (EncoderForSequenceClassification(cfg.model, int(json.loads(task.read_text())["num_labels"]))
                 if task.is_file() else build_model(cfg.model))
    except (ValueError, KeyError, TypeError) as e:
        raise CramlmError(f"cannot read the labels of the fine-tuned classifier in {task}: {e}") from None
    try:
        if weights.is_dir():
            _read_weights(weights, model)
        else:
            model.load_state_dict(load_weights(weights))
    except (SafetensorError, RuntimeError, ValueError) as e:
        raise CramlmError(f"cannot load {weights}: {_first_line(e)}") from None
    return model.to(device).eval(), cfg
