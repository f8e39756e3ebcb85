"""The cascade: first stages answer what they are sure of, in order; the transformer answers the rest.

Any object with `labels` and `predict_proba(texts) -> (n, n_labels)` can be a stage or the transformer, so the routing
is tested with tiny models. A cascade directory holds no pickle: `cascade.json` (stages, thresholds, calibration and
a reference to the fine-tuned transformer), plus each stage's own JSON/YAML/safetensors files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from cramlm.cascade.calibrate import Calibration, answers
from cramlm.cascade.linear import LinearStage, Text
from cramlm.cascade.rules import RuleStage
from cramlm.errors import CramlmError

FORMAT_VERSION = 1


class Classifier(Protocol):
    labels: list[str]

    def predict_proba(self, texts: Sequence[Text]) -> np.ndarray: ...


def check_labels(expected: Sequence[str], model: Classifier, what: str) -> None:
    if list(model.labels) != list(expected):
        raise CramlmError(f"{what} predicts labels [{', '.join(model.labels)}] but the task has "
                          f"[{', '.join(expected)}]: they must be the same, in the same order")


class Cascade:
    """`predict(texts)` -> (label indices, index of the stage that answered; `len(stages)` = the transformer)."""

    def __init__(self, labels: Sequence[str], stages: list[Classifier], thresholds: list[float | None],
                 transformer: Classifier | None, transformer_ref: str | None = None,
                 calibration: Calibration | None = None, task: str | None = None):
        if len(stages) != len(thresholds):
            raise ValueError("one threshold per stage")
        self.labels = list(labels)
        for stage in stages:
            check_labels(self.labels, stage, f"the {stage.kind} stage")
        if transformer is not None:
            check_labels(self.labels, transformer, "the transformer")
        self.stages, self.thresholds = stages, list(thresholds)
        self.transformer, self.transformer_ref = transformer, transformer_ref
        self.calibration, self.task = calibration, task
        self.seconds: dict[str, float] = {}  # wall time spent in each stage, accumulated over predict calls

    @property
    def stage_names(self) -> list[str]:
        return [s.kind for s in self.stages] + ["transformer"]

    def predict(self, texts: Sequence[Text]) -> tuple[np.ndarray, np.ndarray]:
        n = len(texts)
        pred, by = np.full(n, -1), np.full(n, len(self.stages))
        open_idx = np.arange(n)
        for i, (stage, thr) in enumerate(zip(self.stages, self.thresholds)):
            if thr is None or not len(open_idx):
                continue
            probs = self._timed(stage.kind, stage, [texts[j] for j in open_idx])
            hit = answers(probs, thr)
            pred[open_idx[hit]], by[open_idx[hit]] = probs[hit].argmax(axis=1), i
            open_idx = open_idx[~hit]
        if len(open_idx):
            if self.transformer is None:
                raise CramlmError("this cascade was loaded without its transformer")
            probs = self._timed("transformer", self.transformer, [texts[j] for j in open_idx])
            pred[open_idx] = probs.argmax(axis=1)
        return pred, by

    def _timed(self, name: str, model: Classifier, texts: list[Text]) -> np.ndarray:
        t0 = time.perf_counter()
        probs = np.asarray(model.predict_proba(texts))
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        return probs

    # ------------------------------------------------------------------ persistence

    def save(self, directory: Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        stages = [{"kind": stage.kind, "threshold": thr, "files": stage.save(directory, stage.kind)}
                  for stage, thr in zip(self.stages, self.thresholds)]
        meta = {"format": "cramlm-cascade", "version": FORMAT_VERSION, "task": self.task, "labels": self.labels,
                "transformer": self.transformer_ref, "stages": stages,
                "calibration": self.calibration.to_dict() if self.calibration else None}
        (directory / "cascade.json").write_text(json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: Path, transformer: Classifier | None = None, with_transformer: bool = True
             ) -> "Cascade":
        """Rebuild a saved cascade; the transformer is loaded from its reference unless one is given."""
        directory = Path(directory)
        meta = read_meta(directory)
        labels = meta["labels"]
        stages = [load_stage(directory, s["kind"], labels) for s in meta["stages"]]
        if transformer is None and with_transformer:
            from cramlm.cascade.transformer import load_transformer

            transformer = load_transformer(resolve_ref(directory, meta["transformer"]))
        cal = Calibration.from_dict(meta["calibration"]) if meta.get("calibration") else None
        return cls(labels, stages, [s["threshold"] for s in meta["stages"]], transformer, meta["transformer"],
                   cal, meta.get("task"))


def load_stage(directory: Path, kind: str, labels: list[str]) -> Classifier:
    """Each stage kind reads its own files from the cascade dir (a small model: its copied fine-tuned dir)."""
    if kind == "linear":
        return LinearStage.load(directory, kind)
    if kind == "rules":
        return RuleStage.load(directory, labels, kind)
    if kind == "small":
        from cramlm.cascade.transformer import load_transformer

        return load_transformer(directory / kind, kind=kind)
    raise CramlmError(f"{directory}: unknown stage kind {kind!r}")


def read_meta(directory: Path) -> dict:
    path = Path(directory) / "cascade.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CramlmError(f"{directory} is not a cascade directory (no cascade.json); make one with "
                          "`cramlm cascade fit`") from None
    except json.JSONDecodeError as e:
        raise CramlmError(f"{path} is not valid JSON: {e}") from None
    if meta.get("format") != "cramlm-cascade" or meta.get("version") != FORMAT_VERSION:
        raise CramlmError(f"{path} is not a version-{FORMAT_VERSION} cramlm cascade")
    return meta


def resolve_ref(directory: Path, ref: str | None) -> Path:
    """The transformer reference is stored relative to the cascade dir when it can be, so both can move together."""
    if not ref:
        raise CramlmError(f"{directory}/cascade.json names no transformer")
    path = Path(ref)
    return path if path.is_absolute() else (Path(directory) / path).resolve()
