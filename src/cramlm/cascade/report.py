"""`cramlm cascade report`: the accuracy-vs-compute curve over thresholds, as a PNG or a self-contained HTML page.

x is the cascade's FLOPs per input relative to the transformer alone (1.0 = no saving); y is dev accuracy. Each
stage's curve sweeps its threshold with earlier stages at their calibrated thresholds and later stages off; the
marked point is the calibrated cascade.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from cramlm.cascade.calibrate import Calibration
from cramlm.cascade.core import read_meta
from cramlm.errors import CramlmError


def curve_figure(cal: Calibration, title: str = ""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, points in cal.curves.items():
        if len(points) > 1:
            ax.plot([p.relative_flops for p in points], [p.accuracy for p in points], label=f"{name} threshold sweep")
    ax.axhline(cal.transformer_accuracy, color="gray", lw=1, label="transformer alone")
    ax.axhline(cal.transformer_accuracy - cal.max_drop, color="gray", lw=1, ls="--",
               label=f"tolerance (-{cal.max_drop:g} points)")
    ax.plot([cal.relative_flops], [cal.accuracy], "o", color="crimson", label="calibrated cascade")
    ax.set_xlabel("FLOPs per input / transformer alone")
    ax.set_ylabel("dev accuracy (%)")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def summary_rows(cal: Calibration) -> list[tuple[str, str]]:
    """The calibrated figures as (name, value) pairs, shared by the HTML page and the CLI."""
    rows = [("transformer alone, dev accuracy", f"{cal.transformer_accuracy:.2f}"),
            ("cascade, dev accuracy", f"{cal.accuracy:.2f} (tolerance {cal.max_drop:g} points)")]
    for name in [*cal.stages, "transformer"]:
        thr = dict(zip(cal.stages, cal.thresholds)).get(name)
        acc = cal.stage_accuracy.get(name)
        detail = f"threshold {thr:.4f}, " if thr is not None else "off, " if name != "transformer" else ""
        rows.append((f"answered by {name}", f"{100 * cal.answered[name]:.1f}% ({detail}accuracy on them "
                                            f"{'-' if acc is None else f'{acc:.2f}'})"))
    rows.append(("FLOPs per input", ", ".join(f"{k} {v:.3g}" for k, v in cal.flops_per_input.items())))
    rows.append(("FLOPs saved", f"{100 * (1 - cal.relative_flops):.1f}% (cascade = {cal.relative_flops:.3f} x "
                                "transformer)"))
    h = cal.held_out
    if h:
        shares = ", ".join(f"{k} {100 * v:.1f}%" for k, v in h["answered"].items())
        rows.append(("held-out estimate (2-fold on dev)", f"accuracy {h['accuracy']:.2f} vs transformer "
                                                          f"{h['transformer_accuracy']:.2f}; answered: {shares}; "
                                                          f"FLOPs x {h['relative_flops']:.3f}"))
    s = cal.seconds
    if s:
        rows.append(("wall time on dev", f"transformer alone {s['transformer_alone']:.2f} s, cascade "
                                         f"{s['cascade']:.2f} s ({s['transformer_alone'] / s['cascade']:.2f}x "
                                         f"faster, {s['dev_inputs']} inputs)"))
    return rows


def write_report(cascade_dir: str | Path, out: str | Path) -> Path:
    meta = read_meta(Path(cascade_dir))
    if not meta.get("calibration"):
        raise CramlmError(f"{cascade_dir} holds no calibration to plot")
    cal = Calibration.from_dict(meta["calibration"])
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".html", ".svg", ".pdf"):
        raise CramlmError(f"--out must end in .png, .svg, .pdf or .html (got {out.name})")
    title = f"cascade on {meta.get('task') or 'the task'}: accuracy vs compute"
    fig = curve_figure(cal, title)
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix != ".html":
        fig.savefig(out)
        return out
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    img = base64.b64encode(buf.getvalue()).decode()
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary_rows(cal))
    out.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:52rem;margin:2rem auto}}th{{text-align:left;padding-right:1rem}}
td,th{{border-bottom:1px solid #ddd;padding:.3rem}}</style></head><body>
<h1>{html.escape(title)}</h1><img alt="accuracy vs compute" src="data:image/png;base64,{img}">
<table>{rows}</table><p>Thresholds are chosen on the dev split; accuracy on unseen data may differ.</p>
</body></html>
""")
    return out
