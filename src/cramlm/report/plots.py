"""Read run dirs and draw their curves: one matplotlib `Figure` per question, rendered to PNG bytes.

Figures are built with the object API (`matplotlib.figure.Figure`), never pyplot, so no display or global
backend is involved and a report can be drawn on a headless server.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure

from cramlm.budget.scaling import PowerLaw
from cramlm.errors import CramlmError
from cramlm.train.logging import read_metrics


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

    def pairs(self, x: str, y: str, records: list[dict[str, Any]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) arrays over the log steps (or `records`) where both are numbers."""
        rows = [(r.get(x), r.get(y)) for r in (self.steps if records is None else records)]
        rows = [(a, b) for a, b in rows if isinstance(a, (int, float)) and isinstance(b, (int, float))]
        return np.array([a for a, _ in rows], dtype=float), np.array([b for _, b in rows], dtype=float)

    @property
    def final_loss(self) -> float | None:
        """Held-out loss at the end (train.json, else the last val record), else the last training loss."""
        for value in (self.train.get("val_loss"), *(r.get("val_loss") for r in reversed(self.vals)),
                      self.train.get("train_loss"), *(r.get("loss") for r in reversed(self.steps))):
            if isinstance(value, (int, float)) and np.isfinite(value):
                return float(value)
        return None

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
    return Run(
        name=path.resolve().name, path=path, config=config,
        steps=[r for r in records if "event" not in r and "step" in r],
        vals=[r for r in records if r.get("val_loss") is not None],
        train=results.pop("train", {}), cost=results.pop("cost", {}), evals=results,
    )


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return buf.getvalue()


def _grid(n: int, title: str) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(5.2 * n, 3.8))
    axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    fig.suptitle(title)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def _legend(axes: list[Any]) -> None:
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")


def loss_figure(runs: list[Run]) -> Figure:
    """Training loss (lines) and held-out loss (dots) against wall-clock, tokens and FLOPs."""
    fig, axes = _grid(3, "loss")
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        for ax, key, scale in zip(axes, ("seconds", "tokens", "flops"), (1 / 3600, 1.0, 1.0)):
            x, y = run.pairs(key, "loss")
            ax.plot(x * scale, y, ".-", color=color, markersize=4, label=run.name)  # dots: one-record runs show
            vx, vy = run.pairs(key, "val_loss", run.vals_with(key))
            ax.plot(vx * scale, vy, "o", color=color, markersize=4)
    for ax, label in zip(axes, ("wall-clock (hours)", "tokens", "training FLOPs")):
        ax.set_xlabel(label)
        ax.set_ylabel("loss (dots: held-out)")
    for ax in axes[1:]:
        if any(len(r.pairs("tokens", "loss")[0]) for r in runs):
            ax.set_xscale("log")
    _legend(axes[:1])
    return fig


def progress_figure(runs: list[Run], keys: tuple[str, ...], labels: tuple[str, ...], title: str,
                    percent: tuple[bool, ...] = ()) -> Figure:
    """Quantities of the log against budget progress (0-100%), one panel per key."""
    fig, axes = _grid(len(keys), title)
    for i, run in enumerate(runs):
        for ax, key, pct in zip(axes, keys, percent or (False,) * len(keys)):
            p, v = run.pairs("progress", key)
            ax.plot(100 * p, 100 * v if pct else v, ".-", color=f"C{i % 10}", markersize=4, label=run.name)
    for ax, label in zip(axes, labels):
        ax.set_xlabel("budget progress (%)")
        ax.set_ylabel(label)
    _legend(axes[:1])
    return fig


def scaling_figure(runs: list[Run], fit: PowerLaw, extrapolate_to: float) -> Figure:
    """Final loss against training FLOPs with the fitted L(C) = a C^-b + e, drawn out to `extrapolate_to`."""
    fig, (ax,) = _grid(1, "scaling: final loss vs compute")
    c = np.logspace(np.log10(min(r.flops for r in runs)) - 0.2, np.log10(extrapolate_to), 200)
    ax.plot(c, fit(c), "--", color="gray",
            label=f"L = {fit.a:.3g} C^-{fit.b:.3g} + {fit.e:.3g} (R² {fit.r2:.3f})")
    for i, run in enumerate(runs):
        ax.plot(run.flops, run.final_loss, "o", color=f"C{i % 10}", label=run.name)
    ax.plot([extrapolate_to], [fit(extrapolate_to)], "*", color="black", markersize=12,
            label=f"extrapolated: {fit(extrapolate_to):.3f} at {extrapolate_to:.2g} FLOPs")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("final loss")
    ax.legend(fontsize="small")
    return fig
