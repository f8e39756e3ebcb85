"""`cramlm finetune`: a pretrained decoder trained further on prompt/response pairs, under a budget.

The pretraining `Trainer` does the work (clock, LR schedule, checkpoints, exact resume, guards, progress lines);
`FinetuneTrainer` only swaps its data hooks for the pairs (`finetune/data.py`) and starts from the source run's
weights. The output is an ordinary run dir (config.yaml, final/, tokenizer.json, results/) plus `finetune.json`,
which names the source, the data and the token layout, and lets `--resume` continue the run.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from cramlm.config import RunConfig, load_run_config, resolve_config
from cramlm.errors import CramlmError
from cramlm.finetune.data import PairData, PairLoader, file_sha256, response_loss
from cramlm.train import preflight
from cramlm.train.trainer import Trainer, _write_json

META = "finetune.json"
META_KEYS = ("data", "data_sha256", "prompt_field", "response_field", "val_fraction")  # what --resume reads
LAYOUT = "[SEP] prompt [SEP] response [SEP]"
# The train section of a fine-tune, under the user's overrides: a short run at a fixed batch and a modest AdamW LR
# (the LR is AdamW's, not the pretraining autopilot's Muon), warmed up briefly and decayed to zero (BERT's
# schedule), checkpointed and validated often.
DEFAULTS = ["train.batch_size=32", "train.micro_batch_size=auto", "train.optimizer=adamw", "train.lr=3e-4",
            "train.schedule=linear", "train.warmup=0.06", "train.lr_start=0.0", "train.lr_end=0.0",
            "train.batch_ramp=none",
            "train.checkpoint_every=5m", "train.val_every=2m", "train.val_batches=8", "budget.limit=5m"]
MODEL_FREE = ("dropout",)  # the only model keys a fine-tune may change: the others would not fit the weights


class FinetuneTrainer(Trainer):
    """The pretraining loop over `PairData`, starting from `weights` (None when resuming: the checkpoint has them)."""

    def __init__(self, cfg: RunConfig, pairs: PairData, run_dir: Path, weights: dict[str, torch.Tensor] | None,
                 progress: bool = True, resume: bool = False):
        self.pairs = pairs
        super().__init__(cfg, pairs.root, run_dir, progress=progress, resume=resume)
        if weights is not None:
            self.module.load_state_dict(weights)

    def open_data(self, data_dir: Path) -> PairData:
        return self.pairs

    def shape(self, cfg: RunConfig) -> RunConfig:
        """The model stays the source's (its positions, its vocabulary); sequences are the pairs' padded length."""
        cfg = cfg.model_copy(deep=True)
        cfg.data.seq_len = self.pairs.seq_len
        return cfg

    def make_loader(self) -> PairLoader:
        return PairLoader(self.pairs, self.cfg.train.seed, self.strategy.rank, self.strategy.world_size)

    def heldout(self) -> float:
        return response_loss(self.module, self.pairs, self.micro, self.cfg.train.val_batches * self.micro, self.dtype)


def _source(source: Path) -> tuple[RunConfig, dict[str, torch.Tensor], Path]:
    """The source decoder's config, weights and tokenizer file (a run dir or an exported HF dir)."""
    from cramlm.eval.loading import load_pretrained

    pre = load_pretrained(source, "finetune")
    if pre.cfg.model.arch != "decoder":
        raise CramlmError(f"{source} is an encoder: finetune trains causal decoders on prompt/response pairs "
                          f"(fine-tune an encoder on a classification task with `cramlm eval glue`)")
    return pre.cfg, pre.model.state_dict(), Path(source) / "tokenizer.json"


def _check_model(cfg: RunConfig, source: RunConfig, what: str) -> None:
    was, now = source.model.model_dump(), cfg.model.model_dump()
    changed = [key for key in was if key not in MODEL_FREE and was[key] != now[key]]
    if changed:
        raise CramlmError(f"a fine-tune keeps the shape of {what}: drop the overrides of "
                          f"{', '.join('model.' + k for k in changed)}")


def finetune(source: Path | None, data: Path | None, out_dir: Path, *, overrides: list[str] = (),
             prompt_field: str = "prompt", response_field: str = "response", val_fraction: float = 0.05,
             resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Fine-tune the decoder in `source` on the pairs in `data`, writing the run dir `out_dir`; `resume=True`
    continues `out_dir` (its source and data are read from its `finetune.json`; `overrides` such as a larger
    `budget.limit` apply on top). Everything is checked before the first file is written.
    Returns the content of `results/train.json` (or `status: interrupted` after a signal)."""
    out_dir = Path(out_dir)
    weights = None
    if resume:
        meta = _read_meta(out_dir)
        data = Path(meta["data"])
        if not data.is_file() or file_sha256(data) != meta["data_sha256"]:
            raise CramlmError(f"{data}, the pairs {out_dir} was fine-tuned on, is gone or has changed since: "
                              f"resume needs the same file")
        saved = load_run_config(out_dir / "config.yaml")
        cfg = resolve_config(base=saved.model_dump(mode="json"), overrides=list(overrides))
        _check_model(cfg, saved, f"the run {out_dir}")
        prompt_field, response_field, val_fraction = meta["prompt_field"], meta["response_field"], meta["val_fraction"]
    else:
        if source is None or data is None:
            raise CramlmError("finetune needs a source RUN (a decoder run dir or HF export) and --data PAIRS.jsonl")
        data = Path(data)
        if not data.is_file():
            raise CramlmError(f"pairs file {data} does not exist")
        source_cfg, weights, tokenizer = _source(Path(source))
        cfg = resolve_config(base=source_cfg.model_dump(mode="json"), overrides=DEFAULTS + list(overrides))
        _check_model(cfg, source_cfg, f"the source {source}")
    preflight.check_run_dir(out_dir, data, resume)
    tokenizer = out_dir / "tokenizer.json" if resume else tokenizer
    pairs = PairData(data, tokenizer, cfg.model.vocab_size, cfg.model.max_seq_len, prompt_field, response_field,
                     val_fraction)
    trainer = FinetuneTrainer(cfg, pairs, out_dir, weights, progress=progress, resume=resume)
    resumed_from = trainer.restore() if resume else None
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.saved_config().save(out_dir / "config.yaml")
    if not resume:
        shutil.copyfile(tokenizer, out_dir / "tokenizer.json")
        _write_json(out_dir / META, {
            "source": str(Path(source).resolve()), "data": str(data.resolve()), "data_sha256": file_sha256(data),
            "prompt_field": prompt_field, "response_field": response_field, "val_fraction": val_fraction,
            "layout": LAYOUT, "split": pairs.summary()})
    if pairs.dropped or pairs.truncated:
        trainer.view.message(f"{pairs.truncated} prompt(s) cut to fit {cfg.model.max_seq_len} tokens; "
                             f"{pairs.dropped} example(s) left out (the response alone does not fit)")
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        return trainer.fit(resumed_from)


def _read_meta(out_dir: Path) -> dict[str, Any]:
    try:
        meta = json.loads((out_dir / META).read_text())
    except FileNotFoundError:
        raise CramlmError(f"{out_dir} is not a fine-tuned run (no {META}) to resume") from None
    except ValueError as e:
        raise CramlmError(f"{out_dir / META} is not valid JSON: {e}") from None
    missing = [k for k in META_KEYS if k not in meta] if isinstance(meta, dict) else list(META_KEYS)
    if missing:
        raise CramlmError(f"{out_dir / META} lacks {', '.join(missing)}: it was not written by `cramlm finetune`")
    return meta
