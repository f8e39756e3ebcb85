"""A classifier fine-tuned by `cramlm eval glue` (`RUN/finetuned/<task>/`), as `predict_proba`: the last stage, or
a middle stage (kind "small") when it is a smaller model, e.g. the first layers of the same pretrain.

Tokenization, truncation and batching are eval.glue's, so the cascade routes to exactly the model that was scored.
FLOPs per input come from budget/flops.py: the encoder trunk at each input's own token length (batches are
length-sorted, so padding is small) plus the pooled classifier head, which runs once per input.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from cramlm.budget.flops import forward_flops_per_token
from cramlm.cascade.linear import Text
from cramlm.config import ModelConfig
from cramlm.data.tokenizer import load_tokenizer
from cramlm.errors import CramlmError
from cramlm.eval.glue import Split, collate, encode, length_sorted_batches, pick_device
from cramlm.models.encoder import EncoderForSequenceClassification
from cramlm.train.checkpoint import load_model


def classifier_flops(cfg: ModelConfig, n_tokens: int, num_labels: int) -> float:
    """Forward FLOPs of one input of `n_tokens`: the trunk on every token (no LM head) + pool and classifier."""
    trunk = forward_flops_per_token(cfg.model_copy(update={"vocab_size": 0, "head_transform": False}), n_tokens)
    return n_tokens * trunk + 2.0 * cfg.d_model * (cfg.d_model + num_labels)


FILES = ("model.safetensors", "config.yaml", "tokenizer.json", "task.json")


class FinetunedClassifier:
    def __init__(self, model: EncoderForSequenceClassification, tokenizer, labels: Sequence[str], max_len: int,
                 task: str | None = None, batch_size: int = 64, device: str = "auto", kind: str = "transformer",
                 path: Path | None = None):
        self.kind, self.path = kind, path  # path: the fine-tuned dir it was loaded from
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer, self.labels, self.max_len = tokenizer, list(labels), max_len
        self.task, self.batch_size = task, batch_size
        self.truncated = 0  # inputs cut to max_len tokens, over all calls

    def encode(self, texts: Sequence[Text]) -> list[list[int]]:
        split = Split([(t,) if isinstance(t, str) else tuple(t) for t in texts], np.zeros(len(texts)))
        if len({len(t) for t in split.texts}) > 1:
            raise CramlmError("inputs mix single texts and text pairs")
        full = encode(self.tokenizer, split, 1 << 30)
        self.truncated += sum(len(ids) > self.max_len for ids in full)
        return encode(self.tokenizer, split, self.max_len)

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[Text]) -> np.ndarray:
        ids = self.encode(texts)
        out = np.zeros((len(ids), len(self.labels)), dtype=np.float32)
        for index in length_sorted_batches(np.array([len(x) for x in ids], dtype=np.int64), self.batch_size):
            logits = self.model(*collate(ids, index, self.device)).logits.float()
            out[index] = torch.softmax(logits, dim=-1).cpu().numpy()
        return out

    def flops_per_example(self, texts: Sequence[Text]) -> float:
        lengths = [min(len(x), self.max_len) for x in self.encode(texts)]
        counts = np.unique(lengths, return_counts=True)
        total = sum(c * classifier_flops(self.model.cfg, int(n), len(self.labels)) for n, c in zip(*counts))
        return float(total / max(1, len(lengths)))


    def save(self, directory: Path, name: str) -> list[str]:
        """As a middle stage it travels with the cascade: its fine-tuned dir is copied to `directory/name/`."""
        if self.path is None:
            raise CramlmError(f"the {self.kind} stage was not loaded from a fine-tuned dir: nothing to copy")
        (Path(directory) / name).mkdir(parents=True, exist_ok=True)
        for f in FILES:
            shutil.copyfile(self.path / f, Path(directory) / name / f)
        return [f"{name}/{f}" for f in FILES]


def load_transformer(ft_dir: str | Path, device: str = "auto", kind: str = "transformer") -> FinetunedClassifier:
    """Load `finetuned/<task>/` (model.safetensors, config.yaml, tokenizer.json, task.json)."""
    ft_dir = Path(ft_dir)
    missing = [f for f in FILES if not (ft_dir / f).is_file()]
    if missing:
        raise CramlmError(f"{ft_dir} is not a fine-tuned classifier (no {missing[0]}); make one with "
                          "`cramlm eval glue RUN_DIR --tasks TASK`, which keeps RUN_DIR/finetuned/<task>/")
    info = json.loads((ft_dir / "task.json").read_text())
    if not info.get("label_names"):
        raise CramlmError(f"{ft_dir} holds a regression model ({info.get('task')}); a cascade needs a classifier")
    model, cfg = load_model(ft_dir)
    return FinetunedClassifier(model, load_tokenizer(ft_dir / "tokenizer.json"), info["label_names"],
                               int(info.get("max_seq_len", cfg.model.max_seq_len)), info.get("task"),
                               device=device, kind=kind, path=ft_dir)
