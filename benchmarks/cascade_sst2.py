"""Cascade inference on SST-2: the fine-tuned transformer alone vs cascades in front of it (hashed n-gram linear
stage; optionally a smaller fine-tuned model after it), measured side by side in one run.

Thresholds chosen on the whole dev set (what `cramlm cascade fit` does) are scored on the inputs they were fitted to,
so every cascade is also cross-fitted: calibrated on one half of dev and scored on the other, and the reverse. That
held-out column is the accuracy to expect on unseen inputs.

    .venv/bin/python benchmarks/cascade_sst2.py FT_DIR [--small SMALL_FT_DIR] [--glue-dir ../shared/data/glue]
        [--max-drop 0.5]

FT_DIR is a fine-tuned SST-2 classifier (`RUN_DIR/finetuned/sst2`, kept by `cramlm eval glue`); SMALL_FT_DIR a
smaller one (`cramlm cascade shrink` + `cramlm eval glue`). Without FT_DIR the script looks for
runs/*/finetuned/sst2 and skips when there is none (so `make bench` runs without one).
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import numpy as np

from cramlm.cascade import Cascade, LinearStage, calibrate
from cramlm.cascade.calibrate import cross_fit
from cramlm.cascade.transformer import load_transformer
from cramlm.eval.glue import TASKS, read_split


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _pct(share: float | None) -> float | None:
    return None if share is None else 100 * share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ft_dir", nargs="?", help="fine-tuned SST-2 classifier dir")
    ap.add_argument("--small", help="a smaller fine-tuned SST-2 classifier dir, the middle stage (default: none)")
    ap.add_argument("--glue-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"))
    ap.add_argument("--max-drop", type=float, default=0.5, help="tolerance in accuracy points (default 0.5)")
    args = ap.parse_args()
    ft_dir = args.ft_dir or next(iter(sorted(glob.glob("runs/*/finetuned/sst2"))), None)
    if ft_dir is None or not Path(args.glue_dir).is_dir():
        print("skipped: needs a fine-tuned SST-2 classifier (cramlm eval glue RUN --tasks sst2) and GLUE data")
        return
    task = TASKS["sst2"]
    labels = list(task.label_names)
    transformer = load_transformer(ft_dir)
    train, dev = read_split(args.glue_dir, task, "train"), read_split(args.glue_dir, task, "dev")
    tx, dx, y = [t[0] for t in train.texts], [t[0] for t in dev.texts], dev.labels

    t0 = time.perf_counter()
    linear = LinearStage.fit(tx, train.labels, labels)
    fit_s = time.perf_counter() - t0
    stages = [linear] + ([load_transformer(args.small, kind="small")] if args.small else [])
    probs = {s.kind: s.predict_proba(dx) for s in [*stages, transformer]}
    flops = {s.kind: s.flops_per_example(dx) for s in [*stages, transformer]}
    transformer.predict_proba(dx[:64])  # warm-up
    seconds = {s.kind: best_of(lambda s=s: s.predict_proba(dx)) for s in [*stages, transformer]}

    columns = [("transformer alone", None, None, seconds["transformer"])]
    for k in range(1, len(stages) + 1):
        names = [s.kind for s in stages[:k]]
        cal_args = (names, [probs[n] for n in names], probs["transformer"], y, args.max_drop,
                    [flops[n] for n in names], flops["transformer"])
        full, held = calibrate(*cal_args), cross_fit(*cal_args)
        cascade = Cascade(labels, stages[:k], full.thresholds, transformer)
        title = " > ".join(names)
        columns += [(f"{title} (dev)", full, None, best_of(lambda c=cascade: c.predict(dx))),
                    (f"{title} (held-out)", None, held, None)]

    def cell(full, held, get_full, get_held, fmt):
        value = get_full(full) if full else get_held(held) if held else None
        return f"{value:{fmt}}" if value is not None else "-"

    alone = 100.0 * (probs["transformer"].argmax(1) == y).mean()
    rows = [("accuracy (%)", lambda c: c.accuracy, lambda h: h["accuracy"], ".2f", f"{alone:.2f}")]
    for s in stages:
        rows.append((f"answered by {s.kind} (%)", lambda c, n=s.kind: _pct(c.answered.get(n)),
                     lambda h, n=s.kind: _pct(h["answered"].get(n)), ".1f", "0.0"))
    rows += [("FLOPs per input", lambda c: c.relative_flops * flops["transformer"],
              lambda h: h["relative_flops"] * flops["transformer"], ".3g", f"{flops['transformer']:.3g}"),
             ("FLOPs vs transformer alone", lambda c: c.relative_flops, lambda h: h["relative_flops"], ".3g", "1")]

    width = max(22, *(len(c[0]) + 2 for c in columns))
    print(f"SST-2 dev ({len(y)} sentences), transformer {ft_dir}" + (f", small {args.small}" if args.small else "")
          + f"; linear stage trained on {len(tx)} sentences in {fit_s:.1f} s; tolerance {args.max_drop} points")
    print(f"{'':30}" + "".join(f"{c[0]:>{width}}" for c in columns))
    for name, get_full, get_held, fmt, first in rows:
        cells = [first] + [cell(full, held, get_full, get_held, fmt) for _, full, held, _ in columns[1:]]
        print(f"{name:30}" + "".join(f"{c:>{width}}" for c in cells))
    print(f"{'wall time on dev (s, best of 3)':30}" + "".join(
        f"{'-' if t is None else f'{t:.3f}':>{width}}" for *_, t in columns))
    print(f"{'speed-up (wall time)':30}" + "".join(
        f"{'-' if t is None else f'{columns[0][3] / t:.2f}':>{width}}" for *_, t in columns))
    for s in stages:
        print(f"{s.kind} alone: accuracy {100 * (probs[s.kind].argmax(1) == y).mean():.2f}, {seconds[s.kind]:.3f} s "
              f"on dev, {flops[s.kind]:.3g} FLOPs/input")
    for _, full, _, _ in columns:
        if full:
            last = full.stages[-1]
            peak = max(full.curves[last], key=lambda p: (p.accuracy, p.answered))
            print(f"thresholds ({' > '.join(full.stages)}): {', '.join(str(t) for t in full.thresholds)}; best "
                  f"dev accuracy on the {last} sweep {peak.accuracy:.2f} with {100 * peak.answered:.1f}% answered "
                  f"by {last}")


if __name__ == "__main__":
    main()
