"""Choose each first stage's confidence threshold on the dev split.

Stages are tried in order; a stage answers an input when its top probability reaches its threshold, and whatever no
stage answers goes to the transformer. Greedily, stage by stage (earlier stages at their chosen thresholds, later
ones off), each stage gets the threshold that lets it answer the MOST dev inputs while the cascade's dev accuracy
stays within `max_drop` points of the transformer's alone. Every distinct confidence is a candidate: sorting the
open inputs by confidence and a cumulative sum of "stage right minus transformer right" give the cascade's correct
count at every cut at once. Greedy means an earlier stage may spend the whole tolerance; a later stage then answers
only inputs where it is, in total, as good as the transformer. Thresholds fitted on dev are optimistic on unseen
inputs, so `held_out` also estimates them by 2-fold cross-fitting on dev.
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
    held_out: dict = field(default_factory=dict)  # 2-fold estimate on dev: see `cross_fit`

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
    """Thresholds answering the most dev inputs with accuracy >= transformer accuracy - `max_drop` points, greedily
    stage by stage; each stage's curve is swept with earlier stages at their chosen thresholds and later ones off."""
    y = np.asarray(y)
    n = len(y)
    if n == 0:
        raise ValueError("calibration needs a non-empty dev split")
    final_ok = final_probs.argmax(axis=1) == y
    need = final_ok.sum() - max_drop / 100.0 * n - 1e-9  # the fewest correct answers allowed
    correct_now = int(final_ok.sum())  # the cascade's correct answers so far (later stages off)
    open_ = np.ones(n, dtype=bool)  # not answered by an earlier stage
    spent = 0.0  # FLOPs per input of the stages already placed
    thresholds: list[float | None] = []
    curves: dict[str, list[CurvePoint]] = {}
    for name, probs, flops in zip(stage_names, stage_probs, stage_flops):
        idx = np.flatnonzero(open_)
        conf = probs[idx].max(axis=1)
        order = np.argsort(-conf, kind="stable")
        conf_s = conf[order]
        gain = (probs[idx].argmax(axis=1) == y[idx]).astype(int)[order] - final_ok[idx][order]
        correct = correct_now + np.concatenate([[0], np.cumsum(gain)])  # stage answers its k most confident
        # a threshold answers all inputs at least as confident: cut only between distinct, non-zero confidences
        last_of_tie = np.append(conf_s[1:] < conf_s[:-1], True)
        cuts = np.concatenate([[0], np.flatnonzero((conf_s > 0) & last_of_tie) + 1])
        best = int(cuts[correct[cuts] >= need][-1])  # k = 0 always passes: it is the cascade chosen so far
        spent += open_.mean() * flops
        rel = (spent + (len(idx) - cuts) / n * final_flops) / final_flops
        curves[name] = [CurvePoint(None if k == 0 else float(conf_s[k - 1]), float(100.0 * correct[k] / n), k / n,
                                   float(r))
                        for k, r in zip(cuts.tolist(), rel)]
        threshold = None if best == 0 else float(conf_s[best - 1])
        thresholds.append(threshold)
        correct_now = int(correct[best])
        open_ &= ~answers(probs, threshold)
    return summarize(stage_names, thresholds, stage_probs, final_probs, y, max_drop, stage_flops, final_flops,
                     curves)


def cross_fit(stage_names: list[str], stage_probs: list[np.ndarray], final_probs: np.ndarray, y: np.ndarray,
              max_drop: float, stage_flops: list[float], final_flops: float, seed: int = 0) -> dict:
    """What to expect on unseen inputs: calibrate on one random half of dev, score on the other, and the reverse;
    the two scores averaged (weighted by half size)."""
    y = np.asarray(y)
    order = np.random.default_rng(seed).permutation(len(y))
    halves = order[: len(y) // 2], order[len(y) // 2:]
    if min(map(len, halves)) == 0:
        return {}
    scores, weights = [], []
    for fit, test in (halves, halves[::-1]):
        cal = calibrate(stage_names, [p[fit] for p in stage_probs], final_probs[fit], y[fit], max_drop, stage_flops,
                        final_flops)
        scores.append(summarize(stage_names, cal.thresholds, [p[test] for p in stage_probs], final_probs[test],
                                y[test], max_drop, stage_flops, final_flops))
        weights.append(len(test))

    def mean(get) -> float:
        return float(np.average([get(s) for s in scores], weights=weights))

    return {"accuracy": mean(lambda s: s.accuracy), "transformer_accuracy": mean(lambda s: s.transformer_accuracy),
            "answered": {k: mean(lambda s: s.answered[k]) for k in [*stage_names, "transformer"]},
            "relative_flops": mean(lambda s: s.relative_flops)}

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
