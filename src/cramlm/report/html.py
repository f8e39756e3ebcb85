"""The report: one self-contained HTML page (PNG plots embedded as base64) or a markdown summary.

Across three or more runs with different compute it fits L(C) = a C^-b + e to their final losses and extrapolates
to ten times the largest budget: Cramming's observation is that even crammed runs follow such a law.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cramlm.budget.scaling import PowerLaw, fit_power_law
from cramlm.report import plots
from cramlm.report.plots import Run, load_run
from cramlm.units import format_count, format_seconds

EXTRAPOLATE = 10.0  # the scaling fit is drawn out to this multiple of the largest run's FLOPs


def scaling_fit(runs: list[Run]) -> PowerLaw | None:
    """The power law through the runs' (FLOPs, final loss), or None with fewer than 3 different budgets."""
    points = [(r.flops, r.final_loss) for r in runs if r.flops and r.final_loss is not None]
    if len({c for c, _ in points}) < 3:
        return None
    return fit_power_law([c for c, _ in points], [loss for _, loss in points])


def _num(value: Any, fmt: str = ".4g") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


def _eval_text(result: dict[str, Any]) -> str:
    metrics = result.get("metrics") or {}
    return ", ".join(f"{k} {_num(v)}" for k, v in metrics.items() if isinstance(v, (int, float)))


def run_rows(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """The table of runs: header and one row of text cells per run."""
    eval_names = sorted({name for r in runs for name in r.evals})
    header = ["run", "model", "budget", "hardware", "params", "steps", "tokens", "FLOPs", "time", "train loss",
              "val loss", *eval_names, "USD", "kWh", "kg CO2e"]
    rows = []
    for r in runs:
        model = r.config.get("model", {})
        last = r.steps[-1] if r.steps else {}
        seconds = r.train.get("seconds", last.get("seconds"))
        count = r.cost.get("count", r.config.get("budget", {}).get("count", 1))
        hardware = r.cost.get("hardware", r.train.get("hardware", r.config.get("budget", {}).get("hardware", "-")))
        rows.append([
            r.name,
            f"{model.get('arch', '-')} {model.get('n_layers', '?')}x{model.get('d_model', '?')}",
            str(r.train.get("budget", r.config.get("budget", {}).get("limit", "-"))),
            f"{count} x {hardware}",
            format_count(r.train["params"]) if r.train.get("params") else "-",
            _num(r.train.get("steps", last.get("step")), "d"),
            format_count(r.train.get("tokens", last.get("tokens", 0))),
            _num(r.flops, ".3g"),
            format_seconds(seconds) if isinstance(seconds, (int, float)) else "-",
            _num(r.train.get("train_loss", last.get("loss"))),
            _num(r.final_loss),
            *(_eval_text(r.evals[name]) if name in r.evals else "-" for name in eval_names),
            _num(r.cost.get("usd", last.get("usd")), ".3g"),
            _num(r.cost.get("kwh"), ".3g"),
            _num(r.cost.get("co2_kg", last.get("co2_kg")), ".3g"),
        ])
    return header, rows


def fit_text(fit: PowerLaw | None, runs: list[Run]) -> str:
    if fit is None:
        return "The power-law fit of final loss against compute needs 3 or more runs with different budgets."
    top = EXTRAPOLATE * max(r.flops for r in runs if r.flops)
    return (f"L(C) = a·C^(-b) + e with a = {fit.a:.4g}, b = {fit.b:.4g}, e = {fit.e:.4g} (R² = {fit.r2:.4f}); "
            f"extrapolated to {top:.3g} FLOPs ({EXTRAPOLATE:g}x the largest run): L = {fit(top):.4f}.")


def figures(runs: list[Run], fit: PowerLaw | None) -> list[tuple[str, str, bytes]]:
    """(section title, caption, PNG) for every plot of the report."""
    out = [("Loss", "Training loss (lines) and held-out loss (dots) against wall-clock, tokens and FLOPs.",
            plots.png(plots.loss_figure(runs))),
           ("Schedules", "Learning rate and batch size (sequences per optimizer step) against budget progress.",
            plots.png(plots.progress_figure(runs, ("lr", "batch_size"), ("learning rate", "batch size"),
                                            "schedules"))),
           ("Throughput", "Tokens per second and model FLOPs utilisation against budget progress.",
            plots.png(plots.progress_figure(runs, ("tokens_per_s", "mfu"), ("tokens/s", "MFU (%)"),
                                            "throughput", (False, True)))),
           ("Cost", "Dollars and emissions spent so far against budget progress.",
            plots.png(plots.progress_figure(runs, ("usd", "co2_kg"), ("USD", "kg CO2e"), "cost")))]
    if fit is not None:
        top = EXTRAPOLATE * max(r.flops for r in runs if r.flops)
        scaled = [r for r in runs if r.flops and r.final_loss is not None]
        out.insert(0, ("Scaling", fit_text(fit, runs), plots.png(plots.scaling_figure(scaled, fit, top))))
    return out


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } img { max-width: 100%; } figcaption { color: #555; font-size: 0.9em; }
"""


def render_html(runs: list[Run]) -> str:
    """One page, no external resources: the table, the fit and every plot as a base64 PNG."""
    fit = scaling_fit(runs)
    header, rows = run_rows(runs)
    esc = html.escape
    table = ["<table>", "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
    table += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
    table.append("</table>")
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', "<title>cramlm report</title>",
        f"<style>{_CSS}</style>", "</head>", "<body>", "<h1>cramlm report</h1>",
        f"<p>{len(runs)} run{'s' if len(runs) != 1 else ''}, written "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.</p>",
        "<h2>Runs</h2>", *table, f"<p>{esc(fit_text(fit, runs))}</p>",
    ]
    for title, caption, image in figures(runs, fit):
        data = base64.b64encode(image).decode("ascii")
        parts += [f"<h2>{esc(title)}</h2>", "<figure>", f'<img alt="{esc(title)}" src="data:image/png;base64,{data}">',
                  f"<figcaption>{esc(caption)}</figcaption>", "</figure>"]
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def render_markdown(runs: list[Run]) -> str:
    """The table of runs and the scaling fit as markdown (no plots)."""
    header, rows = run_rows(runs)
    lines = ["# cramlm report", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines + ["", fit_text(scaling_fit(runs), runs)]) + "\n"


def report(run_dirs: list[str | Path], fmt: str = "html") -> str:
    """The report of `run_dirs` as HTML or markdown text."""
    runs = [load_run(p) for p in run_dirs]
    names = [r.name for r in runs]
    for r in runs:  # two runs called `final` in different folders: tell them apart
        if names.count(r.name) > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.name}"
    return render_markdown(runs) if fmt == "md" else render_html(runs)
