"""Where a run's numbers go: `metrics.jsonl` always, a live progress line, TensorBoard and W&B on request.

The trainer hands over plain Python numbers at log steps only (it reads the device once per `log_every` optimizer
steps), so nothing here makes the hot loop wait on the accelerator.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from cramlm.units import format_count, format_seconds


def progress_text(r: dict[str, Any]) -> str:
    """One line: step, loss, lr, batch, tokens/s, MFU, ETA, dollars and emissions so far."""
    parts = [f"step {r['step']}"]
    if r.get("loss") is not None:
        parts.append(f"loss {r['loss']:.3f}")
    if r.get("val_loss") is not None:
        parts.append(f"val {r['val_loss']:.3f}")
    parts += [f"lr {r['lr']:.2e}", f"batch {r['batch_size']}", f"{format_count(r['tokens_per_s'])} tok/s"]
    if r.get("mfu") is not None:
        parts.append(f"MFU {100 * r['mfu']:.1f}%")
    if r.get("eta") is not None:
        parts.append(f"ETA {format_seconds(r['eta'])}")
    parts.append(f"${r['usd']:.3f}")
    parts.append(f"{r['co2_kg']:.4f} kgCO2e")
    return " | ".join(parts)


class ProgressLine:
    """A rich progress bar on a terminal; elsewhere a plain line at most every `every` seconds."""

    def __init__(self, enabled: bool = True, every: float = 10.0, console: Console | None = None):
        self.enabled = enabled
        self.every = every
        self.console = console or Console(file=sys.stdout)
        self.live = enabled and self.console.is_terminal
        self._last = 0.0
        self._bar: Progress | None = None
        self._task: Any = None

    def update(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        text = progress_text(record)
        if self.live:
            if self._bar is None:
                self._bar = Progress(TextColumn("{task.percentage:>3.0f}%"), BarColumn(bar_width=24),
                                     TextColumn("{task.fields[info]}"), console=self.console, transient=False)
                self._bar.start()
                self._task = self._bar.add_task("train", total=1.0, info="")
            self._bar.update(self._task, completed=record["progress"], info=text)
        elif time.monotonic() - self._last >= self.every or record["progress"] >= 1.0:
            self._last = time.monotonic()
            self.console.print(f"{100 * record['progress']:5.1f}% | {text}", highlight=False, soft_wrap=True)

    def message(self, text: str) -> None:
        if self.enabled:
            (self._bar.console if self._bar else self.console).print(text, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class MetricsLog:
    """Append-only `metrics.jsonl` (one JSON object per line), mirrored to TensorBoard / W&B when asked."""

    def __init__(self, run_dir: Path, tensorboard: bool = False, wandb: bool = False,
                 config: dict[str, Any] | None = None, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = open(self.path, "a") if enabled else None
        self._tb = self._open_tensorboard(run_dir) if enabled and tensorboard else None
        self._wandb = self._open_wandb(run_dir, config) if enabled and wandb else None

    @staticmethod
    def _open_tensorboard(run_dir: Path) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn("train.tensorboard is on but tensorboard is not installed (pip install cramlm[track])",
                          stacklevel=3)
            return None
        return SummaryWriter(str(Path(run_dir) / "tensorboard"))

    @staticmethod
    def _open_wandb(run_dir: Path, config: dict[str, Any] | None) -> Any:
        try:
            import wandb
        except ImportError:
            warnings.warn("train.wandb is on but wandb is not installed (pip install cramlm[track])", stacklevel=3)
            return None
        return wandb.init(project="cramlm", dir=str(run_dir), config=config, name=Path(run_dir).name)

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        step = int(record.get("step", 0))
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of a run's `metrics.jsonl` (a torn last line from a crash is ignored)."""
    out = []
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
