"""Checks a run passes before it writes anything.

A refused `train` leaves the run dir and the dataset byte for byte as they were, and a run that could only fail at
its end (no held-out data for its final evaluation) fails before its first step. `eval` reuses the tokenizer check:
a model scored on data made with another tokenizer reads ids that mean other tokens.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cramlm.config import RunConfig, load_run_config
from cramlm.data.store import Dataset
from cramlm.errors import CramlmError

TOKENIZATION = ("normalizer", "pre_tokenizer", "model")  # the parts of a tokenizer.json that decide a text's ids


def tokenizer_fingerprint(path: str | Path) -> str:
    """sha256 of what turns text into ids (normalizer, pre-tokenizer, model with its vocabulary). A run's copy of its
    dataset's tokenizer and the one its HF export writes share it, whatever their post-processor or JSON layout."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CramlmError(f"cannot read tokenizer {path}: {e}") from None
    if not isinstance(data, dict):
        raise CramlmError(f"tokenizer {path} is not a tokenizer.json")
    parts = {key: data.get(key) for key in TOKENIZATION}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def check_same_tokenizer(dataset: Dataset, model_tokenizer: str | Path, model: str | Path) -> None:
    """Refuse a dataset whose tokenizer is not the model's: its token ids would stand for other tokens."""
    if tokenizer_fingerprint(dataset.tokenizer_path) != tokenizer_fingerprint(model_tokenizer):
        raise CramlmError(f"{dataset.root} was made with another tokenizer than {model} ({dataset.tokenizer_path} "
                          f"and {model_tokenizer} differ): use a dataset prepared with --tokenizer-file "
                          f"{model_tokenizer}")


def check_run_dir(out_dir: Path, data_dir: Path, resume: bool) -> None:
    """A fresh run needs a dir that holds no run, a resumed one a run dir; neither may lie in the dataset dir,
    whose files the run would overwrite."""
    out, data = Path(out_dir).resolve(), Path(data_dir).resolve()
    if out == data or data in out.parents:
        raise CramlmError(f"the run dir {out_dir} is the dataset dir {data_dir} or inside it: choose an --out "
                          f"outside it")
    if not resume and ((out / "checkpoints").exists() or (out / "final").exists()):
        raise CramlmError(f"{out_dir} already holds a run: continue it with --resume {out_dir} or pick another --out")
    if resume and not (out / "config.yaml").is_file():
        raise CramlmError(f"{out_dir} is not a run dir (no config.yaml) to resume")


def check_val_split(dataset: Dataset) -> None:
    """The run ends with a held-out evaluation: without validation sequences it would spend its budget and fail."""
    if len(dataset.sequences("val")) == 0:
        raise CramlmError(f"{dataset.root} has no validation sequences, which training needs for its held-out "
                          f"loss: prepare it again with a larger --val-fraction (data.val_fraction)")


def check_resume(run_dir: Path, dataset: Dataset, cfg: RunConfig) -> None:
    """Resuming continues the run's own model on its own tokens: the dataset's tokenizer, vocabulary and sequence
    length, and the model and optimizer of `cfg` (the config given now, shaped to the dataset), must be the run's."""
    run_dir = Path(run_dir)
    saved = load_run_config(run_dir / "config.yaml")
    if (run_dir / "tokenizer.json").is_file():
        check_same_tokenizer(dataset, run_dir / "tokenizer.json", f"the run {run_dir}")
    if dataset.vocab_size != saved.model.vocab_size:
        raise CramlmError(f"{dataset.root} has a vocabulary of {dataset.vocab_size} tokens, the run {run_dir} "
                          f"{saved.model.vocab_size}: resume on the run's dataset")
    if dataset.seq_len != saved.model.max_seq_len:
        raise CramlmError(f"{dataset.root} holds sequences of {dataset.seq_len} tokens, the run {run_dir} trained on "
                          f"{saved.model.max_seq_len}: resume on the run's dataset")
    was, now = saved.model.model_dump(), cfg.model.model_dump()
    changed = [(f"model.{key}", was[key], now[key]) for key in was if was[key] != now[key]]
    if cfg.train.optimizer != saved.train.optimizer:
        changed.append(("train.optimizer", saved.train.optimizer, cfg.train.optimizer))
    if changed:
        what = ", ".join(f"{key} {new} (the run has {old})" for key, old, new in changed)
        raise CramlmError(f"--resume continues {run_dir} with its own model and optimizer, not {what}: start a new "
                          f"run (--out) to change them")
