"""The report: one self-contained HTML page (PNG plots embedded as base64) or a markdown summary.

Across three or more comparable runs with different compute it fits L(C) = a C^-b + e to their final losses and
extrapolates to ten times the largest budget: Cramming's observation is that even crammed runs follow such a law
(which runs are comparable, and when a fit is refused: `cramlm.report.fits`). A sweep dir adds loss against
learning rate per width, the picture muP transfer is judged by, and the coordinate check written there.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cramlm.report import plots
from cramlm.report.fits import EXTRAPOLATE, TRAIN_LOSS_MARK, Fit, fit_lines, scaling_fits
from cramlm.report.plots import Run, Sweep, load_run, load_sweep
from cramlm.train import coord_check
from cramlm.train.coord_check import growth
from cramlm.units import format_count, format_seconds

TRAIN_LOSS_NOTE = f"{TRAIN_LOSS_MARK} train loss: no validation loss recorded."


def _num(value: Any, fmt: str = ".4g") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


def _eval_text(result: dict[str, Any]) -> str:
    metrics = result.get("metrics") or {}
    return ", ".join(f"{k} {_num(v)}" for k, v in metrics.items() if isinstance(v, (int, float)))


def _train_loss_only(run: Run) -> bool:
    """The run's final loss is its training loss: it recorded no held-out loss."""
    return run.val_loss is None and run.final_loss is not None


def _sparse_flops(sp: dict[str, Any] | None) -> str:
    """A SWAT run's training FLOPs as a sparse accelerator would execute them, and the share of dense saved."""
    return f"{sp['sparse_flops']:.3g} (-{100 * sp['flops_saved']:.0f}%)" if sp else "-"


def run_rows(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """The table of runs: header and one row of text cells per run."""
    eval_names = sorted({name for r in runs for name in r.evals})
    sparse = any(r.train.get("sparsity") for r in runs)  # a column only when a run trained sparse
    header = ["run", "status", "model", "budget", "hardware", "params", "steps", "tokens", "FLOPs",
              *(["sparse FLOPs"] if sparse else []), "time",
              "train loss", "val loss", *eval_names, "USD", "kWh", "kg CO2e"]
    rows = []
    for r in runs:
        model = r.config.get("model", {})
        last = r.steps[-1] if r.steps else {}
        seconds = r.train.get("seconds", last.get("seconds"))
        count = r.cost.get("count", r.config.get("budget", {}).get("count", 1))
        hardware = r.cost.get("hardware", r.train.get("hardware", r.config.get("budget", {}).get("hardware", "-")))
        rows.append([
            r.name,
            r.status,
            f"{model.get('arch', '-')} {model.get('n_layers', '?')}x{model.get('d_model', '?')}",
            str(r.train.get("budget", r.config.get("budget", {}).get("limit", "-"))),
            f"{count} x {hardware}",
            format_count(r.train["params"]) if r.train.get("params") else "-",
            _num(r.train.get("steps", last.get("step")), "d"),
            format_count(r.train.get("tokens", last.get("tokens", 0))),
            _num(r.flops, ".3g"),
            *([_sparse_flops(r.train.get("sparsity"))] if sparse else []),
            format_seconds(seconds) if isinstance(seconds, (int, float)) else "-",
            _num(r.train.get("train_loss", last.get("loss"))),
            _num(r.final_loss) + (TRAIN_LOSS_MARK if _train_loss_only(r) else ""),
            *(_eval_text(r.evals[name]) if name in r.evals else "-" for name in eval_names),
            _num(r.cost.get("usd", last.get("usd")), ".3g"),
            _num(r.cost.get("kwh"), ".3g"),
            _num(r.cost.get("co2_kg", last.get("co2_kg")), ".3g"),
        ])
    return header, rows


def best_lrs(sweep: Sweep) -> str:
    """"standard: width 64 at 0.004, ...; mup: ...": the LR of the lowest loss per parametrization and width."""
    best: dict[tuple[str, int], tuple[float, float]] = {}
    for t in sweep.trials:
        key = (t.parametrization, t.width)
        if t.loss is not None and (key not in best or t.loss < best[key][0]):
            best[key] = (t.loss, t.lr)
    kinds = [k for k in ("standard", "mup") if any(p == k for p, _ in best)]
    return "; ".join(f"{kind}: " + ", ".join(f"width {w} at {lr:.3g}" for (p, w), (_, lr) in sorted(best.items())
                                             if p == kind) for kind in kinds)


def coord_caption(rows: list[dict[str, Any]]) -> str:
    ratios = growth(rows)
    widths = sorted({r["width"] for r in rows})
    logits = ", ".join(f"{p} {ratios[p, 'logits']:.2f}x" for p in ("standard", "mup") if (p, "logits") in ratios)
    return (f"Mean |activation| per layer against width after a few Adam steps: flat under muP, growing under the "
            f"standard parametrization. Logits at width {widths[-1]} / width {widths[0]}: {logits}.")


def figures(runs: list[Run], fits: list[Fit], sweeps: list[Sweep]) -> list[tuple[str, str, bytes]]:
    """(section title, caption, PNG) for every plot of the report."""
    out = []
    laws = [f for f in fits if f.law is not None]
    if laws:
        out.append(("Scaling", f"Final loss against training FLOPs for each fit above; the star is its "
                               f"extrapolation to {EXTRAPOLATE:g}x its largest run.",
                    plots.png(plots.scaling_figure(laws))))
    for sweep in sweeps:
        if sweep.trials:
            out.append((f"Sweep {sweep.name}", "Held-out loss against peak learning rate, one line per width. Best "
                        f"LR: {best_lrs(sweep) or 'no trial has a loss yet'}.", plots.png(plots.sweep_figure(sweep))))
        if sweep.coord_rows:
            out.append((f"Coordinate check {sweep.name}", coord_caption(sweep.coord_rows),
                        coord_check.plot(sweep.coord_rows)))
    return out + [
        ("Loss", "Training loss (lines) and held-out loss (dots) against wall-clock, tokens and FLOPs.",
         plots.png(plots.loss_figure(runs))),
        ("Schedules", "Learning rate and batch size (sequences per optimizer step) against budget progress.",
         plots.png(plots.progress_figure(runs, ("lr", "batch_size"), ("learning rate", "batch size"), "schedules"))),
        ("Throughput", "Tokens per second and model FLOPs utilisation against budget progress.",
         plots.png(plots.progress_figure(runs, ("tokens_per_s", "mfu"), ("tokens/s", "MFU (%)"), "throughput",
                                         (1.0, 100.0)))),
        ("Cost", "Dollars and emissions spent so far against budget progress.", plots.png(plots.cost_figure(runs))),
    ]


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } img { max-width: 100%; } figcaption { color: #555; font-size: 0.9em; }
"""


def _notes(runs: list[Run]) -> list[str]:
    """The table's footnote, when one of its losses needs it."""
    return [TRAIN_LOSS_NOTE] if any(_train_loss_only(r) for r in runs) else []


def _scaling(runs: list[Run]) -> tuple[list[Fit], list[str]]:
    """The fits over the runs that are not sweep trials (a trial's loss is about its LR), and their sentences."""
    standalone = [r for r in runs if r.sweep is None]
    if not standalone:
        return [], []
    fits, left_out = scaling_fits(standalone)
    return fits, fit_lines(fits, left_out)


def render_html(runs: list[Run], sweeps: list[Sweep]) -> str:
    """One page, no external resources: the table, the fits and every plot as a base64 PNG."""
    fits, lines = _scaling(runs)
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
        "<h2>Runs</h2>", *table, *(f"<p>{esc(note)}</p>" for note in _notes(runs)),
    ]
    if lines:
        parts += ["<h2>Scaling law</h2>", *(f"<p>{esc(line)}</p>" for line in lines)]
    for title, caption, image in figures(runs, fits, sweeps):
        data = base64.b64encode(image).decode("ascii")
        parts += [f"<h2>{esc(title)}</h2>", "<figure>", f'<img alt="{esc(title)}" src="data:image/png;base64,{data}">',
                  f"<figcaption>{esc(caption)}</figcaption>", "</figure>"]
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def render_markdown(runs: list[Run], sweeps: list[Sweep]) -> str:
    """The table of runs, its footnote, the scaling fits and each sweep's best LRs as markdown (no plots)."""
    header, rows = run_rows(runs)
    lines = ["# cramlm report", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    lines += ["", *_notes(runs), *_scaling(runs)[1]]
    lines += [f"Sweep {s.name}, best LR: {best_lrs(s) or 'no trial has a loss yet'}." for s in sweeps]
    return "\n".join(lines) + "\n"


def load(paths: list[str | Path]) -> tuple[list[Run], list[Sweep]]:
    """Run dirs and sweep dirs (sweep.json beside its trials' run dirs, or a coord_check.json): every run, trials
    included, and the sweeps."""
    is_sweep = [(Path(p) / "sweep.json").is_file() or (Path(p) / "coord_check.json").is_file() for p in paths]
    sweeps = [load_sweep(p) for p, sweep in zip(paths, is_sweep) if sweep]
    runs = [load_run(p) for p, sweep in zip(paths, is_sweep) if not sweep]
    runs += [run for sweep in sweeps for run in sweep.runs]
    names = [r.name for r in runs]
    for r in runs:  # two runs called `final` in different folders: tell them apart
        if names.count(r.name) > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.name}"
    return runs, sweeps


def render(runs: list[Run], sweeps: list[Sweep], fmt: str = "html") -> str:
    return render_markdown(runs, sweeps) if fmt == "md" else render_html(runs, sweeps)


def report(paths: list[str | Path], fmt: str = "html") -> str:
    """The report of run dirs and sweep dirs as HTML or markdown text."""
    return render(*load(paths), fmt)
