"""Progress of a GLUE run, visible both on a terminal and in a log file.

A terminal gets live rich bars: one per task and seed, one over all steps with the overall time left. A live bar
cannot draw into a file (a run under nohup), so there a line is logged every `every_s` seconds instead, with the
same figures.
"""

from __future__ import annotations

import time

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
