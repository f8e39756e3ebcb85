"""Choose each first stage's confidence threshold on the dev split.

Stages are tried in order; a stage answers an input when its top probability reaches its threshold, and whatever no
stage answers goes to the transformer. Greedily, stage by stage, we lower the threshold from "never answer" one
distinct confidence at a time and stop before the first threshold at which the cascade's dev accuracy falls more than
`max_drop` points below the transformer's alone. Stopping at the first violation (not taking the lowest threshold that
happens to pass) keeps every stricter threshold within the tolerance too, which is less sensitive to dev-set noise.
Everything here is numpy on precomputed probabilities, so it is exact and fast to test.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


def answers(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Which rows a stage answers: confident enough, and not a row of zeros ("no opinion", e.g. no rule matched)."""
    if threshold is None or not len(probs):
        return np.zeros(len(probs), dtype=bool)
    conf = probs.max(axis=1)
    return (conf > 0) & (conf >= threshold)


@dataclass
class CurvePoint:
    threshold: float | None  # None: the stage never answers
    accuracy: float  # cascade accuracy on dev, in points
    answered: float  # fraction of all dev inputs this stage answers
    relative_flops: float  # cascade FLOPs per input / transformer FLOPs per input


@dataclass
class Calibration:
    stages: list[str]
    thresholds: list[float | None]
    max_drop: float  # points
    transformer_accuracy: float  # points
    accuracy: float  # points, the calibrated cascade on dev
    answered: dict[str, float]  # fraction of dev inputs answered by each stage and by the transformer
    stage_accuracy: dict[str, float | None]  # accuracy of each stage on the inputs it answered (points)
    flops_per_input: dict[str, float]  # each stage's cost when it runs, and the transformer's
    relative_flops: float  # cascade / transformer alone
    curves: dict[str, list[CurvePoint]] = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)  # measured wall time on dev: transformer alone vs the cascade

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        curves = {k: [CurvePoint(**p) for p in v] for k, v in d.get("curves", {}).items()}
        return cls(**{**d, "curves": curves})


def cascade_flops(reach: list[float], stage_flops: list[float], final_flops: float) -> float:
    """Mean FLOPs per input: every stage costs its price on the inputs that reach it; `reach` has one more entry
    than `stage_flops`, the fraction that reaches the transformer."""
    return float(sum(r * f for r, f in zip(reach, stage_flops)) + reach[-1] * final_flops)


def calibrate(stage_names: list[str], stage_probs: list[np.ndarray], final_probs: np.ndarray, y: np.ndarray,
              max_drop: float, stage_flops: list[float], final_flops: float) -> Calibration:
    """Thresholds keeping dev accuracy >= transformer accuracy - `max_drop` points; each stage's curve is swept
    with earlier stages at their chosen thresholds and later stages off."""
    y = np.asarray(y)
    n = len(y)
    if n == 0:
        raise ValueError("calibration needs a non-empty dev split")
    final_ok = final_probs.argmax(axis=1) == y
    need = final_ok.sum() - max_drop / 100.0 * n - 1e-9  # the fewest correct answers allowed
    open_ = np.ones(n, dtype=bool)  # not answered by an earlier stage
    correct_before = 0
    reach: list[float] = []
    thresholds: list[float | None] = []
    curves: dict[str, list[CurvePoint]] = {}
    for i, (name, probs) in enumerate(zip(stage_names, stage_probs)):
        idx = np.flatnonzero(open_)
        conf = probs[idx].max(axis=1)
        order = np.argsort(-conf, kind="stable")
        conf_s = conf[order]
        ok_s = (probs[idx].argmax(axis=1) == y[idx])[order]
        fin_s = final_ok[idx][order]
        m = len(idx)
        # correct answers when this stage answers its k most confident open inputs, k = 0..m
        correct = correct_before + np.concatenate([[0], np.cumsum(ok_s)]) + fin_s.sum() - np.concatenate(
            [[0], np.cumsum(fin_s)])
        cuts = [0] + [k for k in range(1, m + 1) if conf_s[k - 1] > 0 and (k == m or conf_s[k] < conf_s[k - 1])]
        reach.append(open_.mean())
        best, stopped, points = 0, False, []
        for k in cuts:
            rel = cascade_flops(reach + [(m - k) / n], stage_flops[: i + 1], final_flops) / final_flops
            thr = None if k == 0 else float(conf_s[k - 1])
            points.append(CurvePoint(thr, 100.0 * correct[k] / n, k / n, rel))
            stopped = stopped or correct[k] < need
            if not stopped:
                best = k
        curves[name] = points
        threshold = None if best == 0 else float(conf_s[best - 1])
        thresholds.append(threshold)
        hit = open_ & answers(probs, threshold)
        correct_before += int((probs.argmax(axis=1) == y)[hit].sum())
        open_ &= ~hit
    return summarize(stage_names, thresholds, stage_probs, final_probs, y, max_drop, stage_flops, final_flops,
                     curves)


def summarize(stage_names: list[str], thresholds: list[float | None], stage_probs: list[np.ndarray],
              final_probs: np.ndarray, y: np.ndarray, max_drop: float, stage_flops: list[float],
              final_flops: float, curves: dict | None = None) -> Calibration:
    """Accuracy, answered fractions and FLOPs of a cascade with the given thresholds on labelled data."""
    n = len(y)
    open_ = np.ones(n, dtype=bool)
    pred = np.full(n, -1)
    answered, stage_acc, reach = {}, {}, []
    for name, probs, thr in zip(stage_names, stage_probs, thresholds):
        reach.append(open_.mean())
        hit = open_ & answers(probs, thr)
        pred[hit] = probs[hit].argmax(axis=1)
        answered[name] = float(hit.mean())
        stage_acc[name] = float(100.0 * (pred[hit] == y[hit]).mean()) if hit.any() else None
        open_ &= ~hit
    reach.append(open_.mean())
    pred[open_] = final_probs[open_].argmax(axis=1)
    answered["transformer"] = float(open_.mean())
    stage_acc["transformer"] = float(100.0 * (pred[open_] == y[open_]).mean()) if open_.any() else None
    flops = dict(zip(stage_names, map(float, stage_flops)), transformer=float(final_flops))
    return Calibration(
        stages=list(stage_names), thresholds=list(thresholds), max_drop=max_drop,
        transformer_accuracy=float(100.0 * (final_probs.argmax(axis=1) == y).mean()),
        accuracy=float(100.0 * (pred == y).mean()), answered=answered, stage_accuracy=stage_acc,
        flops_per_input=flops, relative_flops=cascade_flops(reach, stage_flops, final_flops) / final_flops,
        curves=curves or {})
