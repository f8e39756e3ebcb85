"""Progress of long evaluations, visible both on a terminal and in a log file.

A terminal gets live rich bars with the time left: for GLUE one per task and seed and one over all steps, for the
other evaluations one over their loop (`LoopProgress`). A live bar cannot draw into a file (a run under nohup), so
there a line is logged every `every_s` seconds instead, with the same figures.
"""

from __future__ import annotations

import time
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class GlueProgress:
    def __init__(self, console: Console, total_steps: int, enabled: bool = True, every_s: float = 60.0):
        self.console, self.total_steps, self.every_s = console, max(1, total_steps), every_s
        self.log_lines = enabled and not console.is_terminal
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn(),
                             console=console, disable=not enabled or self.log_lines, transient=True)
        self.overall = self.bars.add_task("all tasks", total=self.total_steps, loss=float("nan"))
        self.done, self.start, self.last_line = 0, time.time(), time.time()
        self.name, self.total, self.bar = "", 0, None

    def __enter__(self) -> GlueProgress:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.__exit__(*exc)

    def begin(self, name: str, total: int) -> None:
        """A fine-tuning of `total` steps starts (one task, one seed)."""
        self.name, self.total = name, total
        self.bar = self.bars.add_task(name, total=total, loss=float("nan"))

    def step(self, step: int, loss: float) -> None:
        self.done += 1
        if step % 10 == 0 or step == self.total:
            self.bars.update(self.bar, completed=step, loss=loss)
            self.bars.update(self.overall, completed=self.done, loss=loss)
        now = time.time()
        if self.log_lines and now - self.last_line >= self.every_s:
            self.last_line = now
            left = (now - self.start) / self.done * (self.total_steps - self.done)
            self.console.print(f"[{time.strftime('%H:%M:%S')}] {self.name}: step {step}/{self.total}, loss "
                               f"{loss:.3f} | all tasks: step {self.done}/{self.total_steps}, "
                               f"{_duration(now - self.start)} elapsed, about {_duration(left)} left",
                               soft_wrap=True, markup=False, highlight=False)  # one line, however long

    def end(self) -> None:
        self.bars.remove_task(self.bar)


SLOW_SECONDS = 180.0  # a loop expected to run longer says so, with how to shorten it, as soon as it knows


class LoopProgress:
    """One evaluation loop (perplexity windows, pseudo-perplexity passes, LAMBADA passages, held-out batches).

    `enabled` shows the bar (or the log lines). Whether or not it is, a loop whose first items say it will take more
    than `SLOW_SECONDS` prints that estimate once, with the loop's hint (e.g. `--max-tokens`), before going on."""

    def __init__(self, console: Console, description: str, enabled: bool = True, every_s: float = 60.0):
        self.console, self.description, self.every_s = console, description, every_s
        self.log_lines = enabled and not console.is_terminal
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeRemainingColumn(), console=console, disable=not enabled or self.log_lines,
                             transient=True)
        self.task, self.total, self.done, self.unit, self.hint = None, 1, 0, "", ""
        self.start = self.last_line = time.time()

    def __enter__(self) -> LoopProgress:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.__exit__(*exc)

    def begin(self, total: int, unit: str, hint: str = "") -> Callable[[int], None]:
        """The loop has `total` items (`unit`); returns the function to call with each number of items done."""
        self.total, self.unit, self.hint, self.done = max(1, total), unit, hint, 0
        self.start = self.last_line = time.time()
        self.task = self.bars.add_task(self.description, total=self.total)
        return self.advance

    def advance(self, n: int) -> None:
        first = self.done == 0
        self.done += n
        now = time.time()
        left = (now - self.start) / self.done * (self.total - self.done)
        self.bars.update(self.task, completed=self.done)
        if first and left > SLOW_SECONDS:
            self._print(f"{self.description}: {self.total:,} {self.unit}, about {_duration(left)} at this speed"
                        + (f"; {self.hint}" if self.hint else ""))
        elif self.log_lines and now - self.last_line >= self.every_s:
            self.last_line = now
            self._print(f"[{time.strftime('%H:%M:%S')}] {self.description}: {self.done:,}/{self.total:,} "
                        f"{self.unit}, {_duration(now - self.start)} elapsed, about {_duration(left)} left")

    def _print(self, text: str) -> None:
        self.console.print(text, soft_wrap=True, markup=False, highlight=False)


def tracked(progress: LoopProgress | None, total: int, unit: str, hint: str = "") -> Callable[[int], None]:
    """`progress.advance` for a loop of `total` items, or a function that does nothing when there is no progress."""
    return (lambda n: None) if progress is None else progress.begin(total, unit, hint)
