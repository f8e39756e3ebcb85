"""Scaling-law fits over comparable runs only, and honest about when there is no law to show.

A power law of final loss against compute only holds within one objective, tokenizer and dataset: a masked-LM loss
and a causal-LM loss, or losses over two vocabularies, are different quantities, and one curve drawn through them
extrapolates nonsense. So runs are grouped by that triple and each group is fitted on its own; a group with fewer
than 3 different compute budgets, or whose fit explains less than 90% of the variance, gets "no fit (reason)" and
no extrapolation. Failed and interrupted runs stop early on a loss that says nothing about their budget: left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cramlm.budget.scaling import PowerLaw, fit_power_law
from cramlm.errors import CramlmError
from cramlm.report.plots import Run

MIN_RUNS = 3  # different compute budgets a fit needs
MIN_R2 = 0.9  # below this the law explains too little to extrapolate
EXTRAPOLATE = 10.0  # a fit is drawn out to this multiple of its largest run's FLOPs
TRAIN_LOSS_MARK = "†"  # beside a loss that is the training loss: the run recorded no held-out loss


@dataclass(frozen=True)
class Group:
    """What makes two runs' losses comparable: objective, tokenizer (sha256 of tokenizer.json) and dataset."""

    objective: str
    tokenizer: str
    dataset: str

    def __str__(self) -> str:
        return f"{self.objective}, tokenizer {self.tokenizer[:12]}, data {self.dataset}"

    @property
    def label(self) -> str:
        """Short enough for a legend: the dataset by its folder name."""
        return f"{self.objective}, tokenizer {self.tokenizer[:8]}, data {Path(self.dataset).name or self.dataset}"


@dataclass
class Fit:
    """One group's runs and their power law, or the reason there is none."""

    group: Group
    runs: list[Run]
    law: PowerLaw | None
    reason: str = ""

    @property
    def extrapolate_to(self) -> float:
        return EXTRAPOLATE * max(r.flops or 0.0 for r in self.runs)

    def text(self) -> str:
        names = ", ".join(loss_name(r) for r in self.runs)
        if self.law is None:
            return f"{self.group}: no fit ({self.reason}); runs: {names}."
        law, top = self.law, self.extrapolate_to
        return (f"{self.group}: L(C) = a·C^(-b) + e with a = {law.a:.4g}, b = {law.b:.4g}, e = {law.e:.4g} "
                f"(R² = {law.r2:.4f}) over {names}; extrapolated to {top:.3g} FLOPs "
                f"({EXTRAPOLATE:g}x the largest run): L = {law(top):.4f}.")


def loss_name(run: Run) -> str:
    """The run's name, marked when its final loss is the training loss."""
    return run.name + (TRAIN_LOSS_MARK if run.val_loss is None else "")


def _exclusion(run: Run) -> str | None:
    """Why `run` cannot be in any fit, or None."""
    if run.status != "completed":
        return run.status
    if not run.flops or run.final_loss is None:
        return "no FLOPs or loss recorded"
    missing = [what for what, value in (("objective: no model.arch in config.yaml", run.objective),
                                        ("tokenizer: no tokenizer.json", run.tokenizer_sha),
                                        ("dataset: no data_dir or data config", run.dataset)) if value is None]
    return "unknown " + ", ".join(missing) if missing else None


def _fit(group: Group, runs: list[Run]) -> Fit:
    budgets = len({r.flops for r in runs})
    if budgets < MIN_RUNS:
        return Fit(group, runs, None, f"{budgets} compute budget{'s' if budgets != 1 else ''} among comparable "
                                      f"completed runs; a fit needs {MIN_RUNS} or more runs with different budgets")
    try:
        law = fit_power_law([r.flops for r in runs], [r.final_loss for r in runs])
    except CramlmError as e:
        return Fit(group, runs, None, str(e))
    if law.r2 < MIN_R2:
        return Fit(group, runs, None, f"R² = {law.r2:.2f} < {MIN_R2}: the runs do not follow a power law")
    return Fit(group, runs, law)


def scaling_fits(runs: list[Run]) -> tuple[list[Fit], list[str]]:
    """One fit (or no-fit) per group of comparable completed runs, and "name (why)" for each run left out."""
    groups: dict[Group, list[Run]] = {}
    left_out = []
    for run in runs:
        why = _exclusion(run)
        if why:
            left_out.append(f"{run.name} ({why})")
        else:
            group = Group(str(run.objective), str(run.tokenizer_sha), str(run.dataset))  # all known: checked
            groups.setdefault(group, []).append(run)
    return [_fit(group, members) for group, members in groups.items()], left_out


def fit_lines(fits: list[Fit], left_out: list[str]) -> list[str]:
    """The scaling section as sentences: each group's fit or no-fit, then the runs left out."""
    lines = [fit.text() for fit in fits]
    if not fits:
        lines.append(f"No fit: a power law of final loss against compute needs {MIN_RUNS} or more comparable "
                     "completed runs.")
    if left_out:
        lines.append("Not in any fit: " + ", ".join(left_out) + ".")
    return lines
