"""Tune small, train big: a learning-rate grid over a few narrow widths, each trial a normal budgeted run.

A sweep dir holds one run dir per trial (`mup-w128-lr0.00316`) and `sweep.json`, rewritten after every trial, so
a killed sweep continues with the trials left (an interrupted trial resumes from its checkpoint). The first trial
fixes the batch (the autopilot's choice at the base width) for all the others: only the width and the learning
rate vary. Under muP the best learning rate holds from the narrowest width to the widest, so `write_recipe` hands
the one found on the proxy to a wide target model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cramlm.budget.flops import flops_per_token
from cramlm.config import RunConfig, resolve_config
from cramlm.errors import CramlmError
from cramlm.models.family import Shape
from cramlm.train import autopilot
from cramlm.train import checkpoint as ckpt

SWEEP_FILE = "sweep.json"
PARAMETRIZATIONS = ("standard", "mup")


@dataclass
class Trial:
    run: str
    width: int
    lr: float
    parametrization: str
    status: str = "pending"  # pending | completed | failed
    loss: float | None = None  # held-out loss at the end of the trial
    seconds: float = 0.0
    flops: float = 0.0
    tokens: int = 0
    error: str | None = None


@dataclass
class Sweep:
    data_dir: str
    budget: str
    arch: str
    depth: int
    widths: list[int]
    lrs: list[float]
    parametrizations: list[str]
    base_width: int
    batch_size: int | None = None  # fixed by the first trial
    optimizer: str | None = None  # fixed by the first trial (what `train.optimizer: auto` chose): the LRs are its
    trials: list[Trial] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Sweep":
        """A sweep file; one written before `optimizer` was recorded ran its trials with AdamW, the default then."""
        optimizer = data.get("optimizer", "adamw" if data.get("batch_size") is not None else None)
        return cls(**{**data, "optimizer": optimizer, "trials": [Trial(**t) for t in data["trials"]]})


def lr_grid(spec: str, trials: int) -> list[float]:
    """`1e-4..1e-2` with `trials` points spaced evenly in log; or a comma list `1e-3,3e-3`."""
    try:
        if ".." in spec:
            lo, hi = (float(x) for x in spec.split(".."))
            if not 0 < lo < hi or trials < 2:
                raise ValueError
            return [lo * (hi / lo) ** (i / (trials - 1)) for i in range(trials)]
        values = sorted(float(x) for x in spec.split(","))
    except ValueError:
        raise CramlmError(f"--lr {spec!r}: give LO..HI (0 < LO < HI, with --trials 2 or more) or a comma list "
                          "like 1e-3,3e-3") from None
    if not values or values[0] <= 0:
        raise CramlmError(f"--lr {spec!r}: learning rates must be positive")
    return values


def parse_widths(spec: str) -> list[int]:
    try:
        widths = sorted({int(w) for w in spec.split(",")})
    except ValueError:
        raise CramlmError(f"--widths {spec!r}: give widths like 64,128") from None
    if not widths or widths[0] < 16 or any(w % 16 for w in widths):
        raise CramlmError(f"--widths {spec!r}: widths must be multiples of 16, at least 16")
    return widths


def model_section(arch: str, depth: int, width: int, parametrization: str, base_width: int) -> dict[str, Any]:
    """The family's architecture at this depth and width (heads of 64, or one head below 64)."""
    section = Shape(arch, depth, width).model_section()
    section.update(parametrization=parametrization, base_width=base_width if parametrization == "mup" else None)
    return section


def trial_config(sweep: Sweep, trial: Trial, extra: list[str]) -> RunConfig:
    tree = {"model": model_section(sweep.arch, sweep.depth, trial.width, trial.parametrization, sweep.base_width)}
    overrides = [f"budget.limit={sweep.budget}", f"train.lr={trial.lr}"]
    if sweep.optimizer is not None:  # before the extras: an optimizer the user names wins
        overrides.append(f"train.optimizer={sweep.optimizer}")
    overrides += extra
    if sweep.batch_size is not None:
        overrides.append(f"train.batch_size={sweep.batch_size}")
    return resolve_config(recipe="crammed", base=tree, overrides=overrides)


def plan(data_dir: Path, budget: str, arch: str, depth: int, widths: list[int], lrs: list[float],
         parametrizations: list[str]) -> Sweep:
    sweep = Sweep(str(data_dir), budget, arch, depth, widths, lrs, parametrizations, base_width=widths[0])
    for p in parametrizations:
        for w in widths:
            for lr in lrs:
                sweep.trials.append(Trial(f"{p}-w{w}-lr{lr:.3g}", w, lr, p))
    return sweep


def load(out_dir: Path) -> Sweep | None:
    path = out_dir / SWEEP_FILE
    if not path.is_file():
        return None
    try:
        return Sweep.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as e:
        raise CramlmError(f"{path} is not a sweep file cramlm wrote ({e})") from None


def save(out_dir: Path, sweep: Sweep) -> None:
    tmp = out_dir / (SWEEP_FILE + ".tmp")
    tmp.write_text(json.dumps(sweep.to_dict(), indent=1))
    os.replace(tmp, out_dir / SWEEP_FILE)


def same_grid(a: Sweep, b: Sweep) -> bool:
    keys = ("data_dir", "budget", "arch", "depth", "widths", "lrs", "parametrizations")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def run(sweep: Sweep, out_dir: Path, extra: list[str] = (), progress: bool = True,
        echo: Any = print) -> Sweep:
    """Run the trials not yet completed, in order, saving `sweep.json` after each; returns the sweep."""
    from cramlm.train.trainer import train

    out_dir.mkdir(parents=True, exist_ok=True)
    save(out_dir, sweep)
    todo = [t for t in sweep.trials if t.status != "completed"]
    for n, trial in enumerate(todo, 1):
        run_dir = out_dir / trial.run
        resume = bool(ckpt.checkpoint_dirs(run_dir)) if run_dir.exists() else False
        if run_dir.exists() and not resume:
            shutil.rmtree(run_dir)  # a trial that died before its first checkpoint: start it again
        echo(f"trial {sweep.trials.index(trial) + 1}/{len(sweep.trials)}: {trial.parametrization} width "
             f"{trial.width}, lr {trial.lr:.3g}" + (" (resumed)" if resume else ""))
        try:
            results = train(trial_config(sweep, trial, list(extra)), Path(sweep.data_dir), run_dir, resume=resume,
                            progress=progress)
        except CramlmError as e:  # one trial's failure is a point of the grid, not the end of the sweep
            trial.status, trial.error = "failed", str(e)
            save(out_dir, sweep)
            echo(f"  failed: {e}")
            continue
        if results.get("status") != "completed":  # stopped by a signal: the sweep stops too, resumable
            save(out_dir, sweep)
            raise CramlmError(f"sweep stopped during trial {trial.run}; continue with the same command")
        loss = results.get("val_loss")
        trial.status = "completed"
        trial.loss = loss if loss is not None and math.isfinite(loss) else None
        trial.seconds, trial.flops, trial.tokens = results["seconds"], results["flops"], results["tokens"]
        if sweep.batch_size is None:
            sweep.batch_size = int(results["autopilot"]["batch_size"])
            sweep.optimizer = autopilot.from_dict(results["autopilot"]).optimizer
        save(out_dir, sweep)
    return sweep


def best_lrs(sweep: Sweep) -> dict[tuple[str, int], Trial]:
    """(parametrization, width) -> the completed trial with the lowest held-out loss."""
    best: dict[tuple[str, int], Trial] = {}
    for t in sweep.trials:
        if t.status == "completed" and t.loss is not None:
            key = (t.parametrization, t.width)
            if key not in best or t.loss < best[key].loss:
                best[key] = t
    return best


def table(sweep: Sweep) -> list[str]:
    """Loss by LR (rows) and parametrization x width (columns), the best of each column starred."""
    best = best_lrs(sweep)
    cols = [(p, w) for p in sweep.parametrizations for w in sweep.widths]
    lines = ["lr        " + "".join(f"{p[:3]} w{w:<6}" for p, w in cols)]
    by_key = {(t.parametrization, t.width, t.lr): t for t in sweep.trials}
    for lr in sweep.lrs:
        cells = []
        for p, w in cols:
            t = by_key[p, w, lr]
            done = "diverged" if t.loss is None else f"{t.loss:.3f}"
            text = {"completed": done, "failed": "failed"}.get(t.status, "-")
            cells.append(f"{text + ('*' if best.get((p, w)) is t else ''):<11}")
        lines.append(f"{lr:<10.3g}" + "".join(cells))
    return lines


def transfer_lines(sweep: Sweep) -> list[str]:
    """How far the best LR moves from the narrowest to the widest width, per parametrization."""
    best = best_lrs(sweep)
    lines = []
    for p in sweep.parametrizations:
        found = [(w, best[p, w].lr) for w in sweep.widths if (p, w) in best]
        if len(found) >= 2:
            (w0, lr0), (w1, lr1) = found[0], found[-1]
            lines.append(f"{p}: best LR {lr0:.3g} at width {w0}, {lr1:.3g} at width {w1} (x{lr1 / lr0:.2g})")
        elif found:
            lines.append(f"{p}: best LR {found[0][1]:.3g} at width {found[0][0]}")
    return lines


def transferred_lr(sweep: Sweep) -> tuple[str, Trial]:
    """The LR to hand to a wide model: muP's best at the widest swept width (standard's when muP did not run)."""
    best = best_lrs(sweep)
    for p in ("mup", "standard"):
        found = [best[p, w] for w in sweep.widths if (p, w) in best]
        if found:
            return p, found[-1]
    raise CramlmError("no completed trial with a finite loss: nothing to transfer")


def target_cost(sweep: Sweep, target_width: int, seq_len: int, vocab_size: int) -> dict[str, float]:
    """The sweep's FLOPs against one run of the target width at the same tokens per parameter as the widest
    trial (the compute-optimal ratio the budget gave the proxy)."""
    done = [t for t in sweep.trials if t.status == "completed"]
    widest = max(sweep.widths)
    proxy = [t for t in done if t.width == widest]
    if not proxy:
        return {}

    def cfg(width: int) -> Any:
        section = model_section(sweep.arch, sweep.depth, width, "standard", width)
        return resolve_config(base={"model": {**section, "vocab_size": vocab_size, "max_seq_len": seq_len}}).model

    proxy_cfg, target_cfg = cfg(widest), cfg(target_width)
    tokens = proxy[0].tokens * autopilot.non_embedding_params(target_cfg) / autopilot.non_embedding_params(proxy_cfg)
    target_flops = tokens * flops_per_token(target_cfg, seq_len)
    sweep_flops = sum(t.flops for t in done)
    return {"sweep_flops": sweep_flops, "sweep_seconds": sum(t.seconds for t in done),
            "target_flops": target_flops, "target_tokens": tokens, "ratio": sweep_flops / target_flops}


def write_recipe(sweep: Sweep, path: Path, target_width: int, target_depth: int | None = None) -> dict[str, Any]:
    """A config `cramlm train --config` accepts: the target model (muP, base width = the sweep's) with the
    transferred LR, the optimizer it was found with and the sweep's batch."""
    parametrization, trial = transferred_lr(sweep)
    model = model_section(sweep.arch, target_depth or sweep.depth, target_width, parametrization, sweep.base_width)
    recipe = {"model": model, "train": {"lr": float(f"{trial.lr:.4g}")}}
    if sweep.optimizer is not None:
        recipe["train"]["optimizer"] = sweep.optimizer
    if sweep.batch_size is not None:
        recipe["train"]["batch_size"] = sweep.batch_size
    header = (f"# cramlm sweep: {parametrization} LR {trial.lr:.3g} (best at width {trial.width}, base width "
              f"{sweep.base_width}) for a {model['n_layers']}x{target_width} {sweep.arch}\n")
    path.write_text(header + yaml.safe_dump(recipe, sort_keys=False))
    return recipe


def default_arch(objective: str) -> str:
    if objective not in ("mlm", "causal"):
        raise CramlmError(f"--objective must be mlm or causal (got {objective!r})")
    return "encoder" if objective == "mlm" else "decoder"

