"""Read run dirs and draw their curves: one matplotlib `Figure` per question, rendered to PNG bytes.

Figures are built with the object API (`matplotlib.figure.Figure`), never pyplot, so no display or global
backend is involved and a report can be drawn on a headless server.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from matplotlib.figure import Figure

from cramlm.errors import CramlmError
from cramlm.train import sweep as sweep_file
from cramlm.train.sweep import Trial
from cramlm.train.logging import read_metrics

if TYPE_CHECKING:
    from cramlm.report.fits import Fit


@dataclass
class Run:
    """What a run dir says about itself: config, log records, and the results files."""

    name: str
    path: Path
    config: dict[str, Any]
    steps: list[dict[str, Any]]  # one per log step
    vals: list[dict[str, Any]]  # held-out loss records
    train: dict[str, Any] = field(default_factory=dict)  # results/train.json
    cost: dict[str, Any] = field(default_factory=dict)  # results/cost.json
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # results/<name>.json, the others
    tokenizer_sha: str | None = None  # sha256 of the run's tokenizer.json: runs with other vocabularies differ
    interrupted: bool = False  # the log records a signal that stopped the run
    sweep: str | None = None  # the sweep dir this run is a trial of (its loss is about the LR, not the compute)

    def pairs(self, x: str, y: str, records: list[dict[str, Any]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) arrays over the log steps (or `records`) where both are numbers."""
        rows = [(r.get(x), r.get(y)) for r in (self.steps if records is None else records)]
        rows = [(a, b) for a, b in rows if isinstance(a, (int, float)) and isinstance(b, (int, float))]
        return np.array([a for a, _ in rows], dtype=float), np.array([b for _, b in rows], dtype=float)

    @property
    def val_loss(self) -> float | None:
        """Held-out loss at the end: train.json, else the last val record."""
        return _first_finite(self.train.get("val_loss"), *(r.get("val_loss") for r in reversed(self.vals)))

    @property
    def final_loss(self) -> float | None:
        """The held-out loss, else the last training loss (the report marks which)."""
        return _first_finite(self.val_loss, self.train.get("train_loss"),
                             *(r.get("loss") for r in reversed(self.steps)))

    @property
    def status(self) -> str:
        """`completed` (train.json is written at the end), its other status, `interrupted` or `unfinished`."""
        if self.train:
            return str(self.train.get("status", "completed"))
        return "interrupted" if self.interrupted else "unfinished"

    @property
    def objective(self) -> str | None:
        """mlm (encoder) or causal (decoder), from config.yaml: losses of the two are different quantities."""
        return {"encoder": "mlm", "decoder": "causal"}.get(self.config.get("model", {}).get("arch"))

    @property
    def dataset(self) -> str | None:
        """The dataset dir of train.json, else the config's data section (a short hash of it)."""
        if self.train.get("data_dir"):
            return str(self.train["data_dir"])
        data = self.config.get("data")
        if not data:
            return None
        return "data config " + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]

    @property
    def flops(self) -> float | None:
        """Training FLOPs spent: train.json, else the last log record."""
        value = self.train.get("flops") or (self.steps[-1].get("flops") if self.steps else None)
        return float(value) if value else None

    def vals_with(self, key: str) -> list[dict[str, Any]]:
        """Val records with `key` filled in from the log step with the same or the nearest earlier step."""
        out = []
        for v in self.vals:
            if key in v:
                out.append(v)
                continue
            before = [r for r in self.steps if r.get("step", 0) <= v.get("step", 0) and key in r]
            if before:
                out.append({**v, key: before[-1][key]})
        return out


def _first_finite(*values: Any) -> float | None:
    return next((float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)), None)


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CramlmError(f"{path} is not readable JSON: {e}") from None
    return data if isinstance(data, dict) else {}


def load_run(path: str | Path) -> Run:
    """A run dir as written by `cramlm train` (metrics.jsonl, config.yaml, results/*.json)."""
    path = Path(path)
    if not path.is_dir():
        raise CramlmError(f"run dir {path} does not exist")
    records = read_metrics(path)
    results = {p.stem: _json(p) for p in sorted((path / "results").glob("*.json"))}
    if not records and "train" not in results:
        raise CramlmError(f"{path} is not a run dir: it has neither metrics.jsonl nor results/train.json")
    config: dict[str, Any] = {}
    if (path / "config.yaml").is_file():
        try:
            config = yaml.safe_load((path / "config.yaml").read_text()) or {}
        except yaml.YAMLError:
            raise CramlmError(f"{path / 'config.yaml'} is not valid YAML") from None
    tokenizer = path / "tokenizer.json"
    return Run(
        name=path.resolve().name, path=path, config=config,
        steps=[r for r in records if "event" not in r and "step" in r],
        vals=[r for r in records if r.get("val_loss") is not None],
        train=results.pop("train", {}), cost=results.pop("cost", {}), evals=results,
        tokenizer_sha=hashlib.sha256(tokenizer.read_bytes()).hexdigest() if tokenizer.is_file() else None,
        interrupted=any(r.get("event") == "interrupted" for r in records),
    )


@dataclass
class Sweep:
    """A sweep dir written by `cramlm sweep`: its trials (a diverged trial's loss is None), the trials' run dirs
    that exist yet, and the rows of a coordinate check (`cramlm sweep --coord-check`) written there."""

    name: str
    trials: list[Trial]
    runs: list[Run]
    coord_rows: list[dict[str, Any]] = field(default_factory=list)


def _coord_rows(path: Path) -> list[dict[str, Any]]:
    try:
        rows = json.loads(path.read_text())
        if isinstance(rows, list) and all({"parametrization", "width", "step", "layer", "mean_abs"} <= r.keys()
                                          for r in rows):
            return rows
    except (OSError, ValueError, AttributeError):
        pass
    raise CramlmError(f"{path} is not a coordinate check cramlm wrote")


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    found = sweep_file.load(path)
    coord = path / "coord_check.json"
    if found is None and not coord.is_file():
        raise CramlmError(f"{path} holds no {sweep_file.SWEEP_FILE} nor coord_check.json")
    trials = [replace(t, loss=_first_finite(t.loss)) for t in found.trials] if found else []
    name = path.resolve().name
    runs = []
    for trial in trials:
        run_dir = path / trial.run
        if (run_dir / "metrics.jsonl").is_file() or (run_dir / "results" / "train.json").is_file():
            run = load_run(run_dir)
            run.name, run.sweep = f"{name}/{run.name}", name
            runs.append(run)
    return Sweep(name, trials, runs, _coord_rows(coord) if coord.is_file() else [])


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return buf.getvalue()


def _grid(n: int, title: str) -> tuple[Figure, list[Any]]:
    """One row of `n` panels; constrained layout keeps axis labels clear of their neighbours' tick labels."""
    fig = Figure(figsize=(5.2 * n, 3.8), layout="constrained")
    axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    fig.suptitle(title)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def _legend(axes: list[Any]) -> None:
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")


def time_unit(seconds: float) -> tuple[float, str]:
    """(seconds per unit, unit) for a time axis reaching `seconds`: s under 2 minutes, min under 2 hours, else h."""
    if seconds < 120:
        return 1.0, "s"
    return (60.0, "min") if seconds < 7200 else (3600.0, "h")


def loss_figure(runs: list[Run]) -> Figure:
    """Training loss (lines) and held-out loss (dots) against wall-clock, tokens and FLOPs."""
    fig, axes = _grid(3, "loss")
    longest = max((float(run.pairs("seconds", "loss")[0].max(initial=0.0)) for run in runs), default=0.0)
    per_unit, unit = time_unit(longest)
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        for ax, key, scale in zip(axes, ("seconds", "tokens", "flops"), (1 / per_unit, 1.0, 1.0)):
            x, y = run.pairs(key, "loss")
            ax.plot(x * scale, y, ".-", color=color, markersize=4, label=run.name)  # dots: one-record runs show
            vx, vy = run.pairs(key, "val_loss", run.vals_with(key))
            ax.plot(vx * scale, vy, "o", color=color, markersize=4)
    for ax, label in zip(axes, (f"wall-clock ({unit})", "tokens", "training FLOPs")):
        ax.set_xlabel(label)
        ax.set_ylabel("loss (dots: held-out)")
    for ax in axes[1:]:
        if any(len(r.pairs("tokens", "loss")[0]) for r in runs):
            ax.set_xscale("log")
    _legend(axes[:1])
    return fig


def progress_figure(runs: list[Run], keys: tuple[str, ...], labels: tuple[str, ...], title: str,
                    scales: tuple[float, ...] = ()) -> Figure:
    """Quantities of the log (times `scales`, e.g. 100 for a percentage) against budget progress, one panel each.

    Tick labels are plain numbers: an offset or a `1e-5` above the axis is a unit the reader has to find.
    """
    fig, axes = _grid(len(keys), title)
    for i, run in enumerate(runs):
        for ax, key, scale in zip(axes, keys, scales or (1.0,) * len(keys)):
            p, v = run.pairs("progress", key)
            ax.plot(100 * p, scale * v, ".-", color=f"C{i % 10}", markersize=4, label=run.name)
    for ax, label in zip(axes, labels):
        ax.set_xlabel("budget progress (%)")
        ax.set_ylabel(label)
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    _legend(axes[:1])
    return fig


def cost_figure(runs: list[Run]) -> Figure:
    """Dollars and emissions against budget progress; emissions in kg, g or mg, whichever keeps ticks readable."""
    most = max((float(run.pairs("progress", "co2_kg")[1].max(initial=0.0)) for run in runs), default=0.0)
    scale, unit = next(((s, u) for s, u in ((1.0, "kg"), (1e3, "g")) if most * s >= 1), (1e6, "mg"))
    return progress_figure(runs, ("usd", "co2_kg"), ("USD", f"{unit} CO2e"), "cost", (1.0, scale))


def scaling_figure(fits: list[Fit]) -> Figure:
    """Final loss against training FLOPs for each group's fitted L(C) = a C^-b + e, with its extrapolation."""
    fig, (ax,) = _grid(1, "scaling: final loss vs compute")
    for i, fit in enumerate(fits):
        color, law, top = f"C{i % 10}", fit.law, fit.extrapolate_to
        c = np.logspace(np.log10(min(r.flops for r in fit.runs)) - 0.2, np.log10(top), 200)
        ax.plot(c, law(c), "--", color=color, label=f"{fit.group.label}: R² {law.r2:.3f}")
        for run in fit.runs:
            ax.plot(run.flops, run.final_loss, "o", color=color)
            ax.annotate(run.name, (run.flops, run.final_loss), xytext=(3, 3), textcoords="offset points",
                        fontsize="x-small")
        ax.plot([top], [law(top)], "*", color=color, markersize=12,
                label=f"extrapolated: {law(top):.3f} at {top:.2g} FLOPs")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("final loss")
    ax.legend(fontsize="small")
    return fig


def sweep_figure(sweep: Sweep) -> Figure:
    """Held-out loss against peak LR (log), one line per width; one panel per parametrization, sharing the y axis."""
    kinds = [k for k in ("standard", "mup") if any(t.parametrization == k for t in sweep.trials)]
    widths = sorted({t.width for t in sweep.trials})
    fig, axes = _grid(len(kinds), f"sweep {sweep.name}: held-out loss vs peak learning rate")
    for ax in axes[1:]:
        ax.sharey(axes[0])
    for ax, kind in zip(axes, kinds):
        for i, width in enumerate(widths):
            points = sorted((t.lr, t.loss) for t in sweep.trials
                            if t.parametrization == kind and t.width == width and t.loss is not None)
            if points:
                ax.plot(*zip(*points), "o-", color=f"C{i % 10}", markersize=4, label=f"width {width}")
        ax.set_xscale("log")
        ax.set_title("muP" if kind == "mup" else "standard parametrization")
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("held-out loss")
    _legend(axes)
    return fig
