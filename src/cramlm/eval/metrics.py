"""The official GLUE metrics in plain numpy, so scores need no extra package and match scikit-learn/scipy."""

from __future__ import annotations

import numpy as np


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(labels)))


def f1(pred: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
    """Binary F1 of the positive class (MRPC, QQP); 0 when nothing is predicted or present."""
    pred, labels = np.asarray(pred) == positive, np.asarray(labels) == positive
    tp = float(np.sum(pred & labels))
    denominator = float(np.sum(pred) + np.sum(labels))
    return 2 * tp / denominator if denominator else 0.0


def mcc(pred: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation (CoLA), multi-class form; 0 when either side is constant."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    classes, idx = np.unique(np.concatenate([pred, labels]), return_inverse=True)
    p, t = idx[: len(pred)], idx[len(pred):]
    confusion = np.zeros((len(classes), len(classes)))
    np.add.at(confusion, (t, p), 1)
    n, correct = confusion.sum(), np.trace(confusion)
    true_counts, pred_counts = confusion.sum(1), confusion.sum(0)
    cov = correct * n - true_counts @ pred_counts
    var = (n * n - pred_counts @ pred_counts) * (n * n - true_counts @ true_counts)
    return float(cov / np.sqrt(var)) if var > 0 else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation (STS-B); 0 when either side is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / denominator) if denominator > 0 else 0.0


def rank(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank (as scipy.stats.rankdata)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    average = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (STS-B): Pearson of the tie-averaged ranks."""
    return pearson(rank(x), rank(y))


METRICS = {"accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman}
