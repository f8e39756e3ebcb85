"""Cascade inference on SST-2: the fine-tuned transformer alone vs the cascade (hashed n-gram linear stage first,
transformer for the rest), measured side by side in one run.

Thresholds chosen on the whole dev set (what `cramlm cascade fit` does) see the inputs they are scored on, so the
script also calibrates on one half of dev and scores on the other half (and the reverse): that is the accuracy to
expect on unseen inputs.

    .venv/bin/python benchmarks/cascade_sst2.py FT_DIR [--glue-dir ../shared/data/glue] [--max-drop 0.5]

FT_DIR is a fine-tuned SST-2 classifier (`RUN_DIR/finetuned/sst2`, kept by `cramlm eval glue`). Without it the
script looks for runs/*/finetuned/sst2 and skips when there is none (so `make bench` runs without one).
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

import numpy as np

from cramlm.cascade import Cascade, LinearStage, calibrate
from cramlm.cascade.calibrate import summarize
from cramlm.cascade.transformer import load_transformer
from cramlm.eval.glue import TASKS, read_split


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ft_dir", nargs="?", help="fine-tuned SST-2 classifier dir")
    ap.add_argument("--glue-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"))
    ap.add_argument("--max-drop", type=float, default=0.5, help="tolerance in accuracy points (default 0.5)")
    args = ap.parse_args()
    ft_dir = args.ft_dir or next(iter(sorted(glob.glob("runs/*/finetuned/sst2"))), None)
    if ft_dir is None or not Path(args.glue_dir).is_dir():
        print("skipped: needs a fine-tuned SST-2 classifier (cramlm eval glue RUN --tasks sst2) and GLUE data")
        return
    task = TASKS["sst2"]
    transformer = load_transformer(ft_dir)
    train, dev = read_split(args.glue_dir, task, "train"), read_split(args.glue_dir, task, "dev")
    tx, dx = [t[0] for t in train.texts], [t[0] for t in dev.texts]
    y = dev.labels

    t0 = time.perf_counter()
    linear = LinearStage.fit(tx, train.labels, list(task.label_names))
    fit_s = time.perf_counter() - t0
    p_lin, p_tr = linear.predict_proba(dx), transformer.predict_proba(dx)
    flops = [linear.flops_per_example(dx)], transformer.flops_per_example(dx)

    full = calibrate(["linear"], [p_lin], p_tr, y, args.max_drop, *flops)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    halves = order[: len(y) // 2], order[len(y) // 2:]
    held = []
    for a, b in (halves, halves[::-1]):
        cal = calibrate(["linear"], [p_lin[a]], p_tr[a], y[a], args.max_drop, *flops)
        held.append(summarize(["linear"], cal.thresholds, [p_lin[b]], p_tr[b], y[b], args.max_drop, *flops))
    weights = [len(halves[1]), len(halves[0])]

    def mean(key):
        return float(np.average([getattr(h, key) for h in held], weights=weights))

    def held_answered():
        return float(np.average([h.answered["linear"] for h in held], weights=weights))

    cascade = Cascade(list(task.label_names), [linear], full.thresholds, transformer)
    transformer.predict_proba(dx[:64])  # warm-up
    t_alone = best_of(lambda: transformer.predict_proba(dx))
    t_cascade = best_of(lambda: cascade.predict(dx))
    t_linear = best_of(lambda: linear.predict_proba(dx))

    n = len(y)
    print(f"SST-2 dev ({n} sentences), transformer {ft_dir}, linear stage trained on {len(tx)} sentences in "
          f"{fit_s:.1f} s, tolerance {args.max_drop} points")
    print(f"{'':34}{'transformer alone':>20}{'cascade (dev-calib.)':>22}{'cascade (held-out)':>20}")
    print(f"{'accuracy (%)':34}{full.transformer_accuracy:>20.2f}{full.accuracy:>22.2f}"
          f"{mean('accuracy'):>20.2f}")
    print(f"{'  transformer on the same inputs':34}{'':>20}{full.transformer_accuracy:>22.2f}"
          f"{mean('transformer_accuracy'):>20.2f}")
    print(f"{'answered by the linear stage (%)':34}{0:>20.1f}{100 * full.answered['linear']:>22.1f}"
          f"{100 * held_answered():>20.1f}")
    print(f"{'FLOPs per input':34}{flops[1]:>20.3g}{full.relative_flops * flops[1]:>22.3g}"
          f"{mean('relative_flops') * flops[1]:>20.3g}")
    print(f"{'FLOPs vs transformer alone':34}{1.0:>20.3f}{full.relative_flops:>22.3f}{mean('relative_flops'):>20.3f}")
    print(f"{'wall time on dev (s, best of 3)':34}{t_alone:>20.3f}{t_cascade:>22.3f}{'':>20}")
    print(f"{'speed-up (wall time)':34}{1.0:>20.2f}{t_alone / t_cascade:>22.2f}{'':>20}")
    print(f"linear stage alone: accuracy {100 * (p_lin.argmax(1) == y).mean():.2f}, {t_linear:.3f} s on dev, "
          f"{flops[0][0]:.0f} FLOPs/input; threshold {full.thresholds[0]}")


if __name__ == "__main__":
    main()
