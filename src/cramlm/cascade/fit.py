"""`cramlm cascade fit`: train the first stages on a task's train split, calibrate them on its dev split against
the fine-tuned transformer, measure the saving, and write the cascade directory."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cramlm.cascade.calibrate import calibrate, cross_fit
from cramlm.cascade.core import Cascade, Classifier, check_labels
from cramlm.cascade.linear import HashingParams, LinearStage, Text
from cramlm.cascade.rules import RuleStage
from cramlm.errors import CramlmError


def calibrate_cascade(stages: list[Classifier], dev_texts: Sequence[Text], dev_y: np.ndarray,
                      labels: Sequence[str], transformer: Classifier, max_drop: float = 0.5,
                      task: str | None = None, transformer_ref: str | None = None) -> Cascade:
    """Calibrate trained first stages against any `predict_proba` transformer on labelled dev data, and measure
    the wall time of the transformer alone vs the calibrated cascade on the same inputs."""
    labels = list(labels)
    check_labels(labels, transformer, "the transformer")
    if not stages:
        raise CramlmError("a cascade needs at least one first stage (the linear model or --rules)")
    _warm_up(transformer, dev_texts)
    seconds, probs = {}, []
    for model in [*stages, transformer]:
        t0 = time.perf_counter()
        probs.append(np.asarray(model.predict_proba(dev_texts)))
        seconds[model.kind] = time.perf_counter() - t0
    flops = [float(s.flops_per_example(dev_texts)) for s in stages]
    final_flops = float(transformer.flops_per_example(dev_texts)) if hasattr(transformer, "flops_per_example") \
        else float("nan")
    for stage, f in zip(stages, flops):
        if f >= final_flops:
            raise CramlmError(f"the {stage.kind} stage costs {f:.3g} FLOPs per input, no less than the "
                              f"transformer's {final_flops:.3g}: it cannot save compute")
    args = ([s.kind for s in stages], probs[:-1], probs[-1], np.asarray(dev_y), max_drop, flops, final_flops)
    cal = calibrate(*args)
    cal.held_out = cross_fit(*args)
    cascade = Cascade(labels, stages, cal.thresholds, transformer, transformer_ref, cal, task)
    t0 = time.perf_counter()
    cascade.predict(dev_texts)
    cal.seconds = {"transformer_alone": seconds["transformer"], "cascade": time.perf_counter() - t0,
                   "per_stage_all_inputs": seconds, "dev_inputs": len(dev_texts)}
    return cascade


def _warm_up(model: Classifier, texts: Sequence[Text]) -> None:
    """One small call first, so lazy initialisation does not count against the transformer's measured time."""
    model.predict_proba(list(texts[:64]))


def fit_cascade(ft_dir: str | Path, task_path: str | Path, out: str | Path, max_drop: float = 0.5,
                rules_file: str | Path | None = None, linear: bool = True, max_train_examples: int | None = None,
                hashing: HashingParams = HashingParams(), small: str | Path | None = None,
                log: Callable[[str], None] = lambda _: None) -> Cascade:
    """The CLI's fit: `task_path` is a GLUE task folder (e.g. data/glue/SST-2); read with eval.glue's readers.
    Stages run in the order rules, linear, small (a smaller fine-tuned classifier), then the transformer."""
    from cramlm.cascade.transformer import load_transformer
    from cramlm.eval.glue import parse_tasks, read_split

    task_path = Path(task_path)
    if not task_path.is_dir():
        raise CramlmError(f"task folder {task_path} does not exist (expected e.g. data/glue/SST-2)")
    task = parse_tasks(task_path.name)[0]
    if not task.label_names:
        raise CramlmError(f"{task.name} is a regression task; a cascade needs a classification task")
    transformer = load_transformer(ft_dir)
    small_model = load_transformer(small, kind="small") if small else None
    for model, path in ((transformer, ft_dir), (small_model, small)):
        if model is None:
            continue
        if model.task and model.task != task.name:
            raise CramlmError(f"{path} was fine-tuned on {model.task}, not on {task.name}")
        check_labels(task.label_names, model, f"the {model.kind} in {path}")
    train = read_split(task_path.parent, task, "train").head(max_train_examples)
    dev = read_split(task_path.parent, task, task.dev[0][1])
    out = Path(out)
    ref = os.path.relpath(Path(ft_dir).resolve(), out.resolve())  # relative: the two dirs can move together
    stages: list[Classifier] = [RuleStage.from_yaml(Path(rules_file), task.label_names)] if rules_file else []
    if linear:
        t0 = time.perf_counter()
        stages.append(LinearStage.fit([_text(t) for t in train.texts], train.labels, task.label_names, hashing))
        log(f"linear stage trained on {len(train)} {task.name} examples in {time.perf_counter() - t0:.1f} s")
    if small_model is not None:
        stages.append(small_model)
    cascade = calibrate_cascade(stages, [_text(t) for t in dev.texts], dev.labels, task.label_names, transformer,
                                max_drop, task.name, ref)
    cascade.save(out)
    return cascade


def _text(t: tuple[str, ...]) -> Text:
    return t[0] if len(t) == 1 else t
