"""The model an evaluation reads: a run dir (final weights, config, tokenizer) or an exported HF dir."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer
from torch import nn

from cramlm.config import RunConfig
from cramlm.data.tokenizer import load_tokenizer
from cramlm.errors import CramlmError
from cramlm.export.hf import import_model
from cramlm.train.checkpoint import load_model


@dataclass
class Pretrained:
    model: nn.Module
    cfg: RunConfig
    tokenizer: Tokenizer
    path: Path


def load_pretrained(path: str | Path) -> Pretrained:
    """A run dir's final (or latest) weights, or an exported HF dir (`config.json`), in eval mode on CPU, with
    the resolved config (an HF dir gets the default sections besides its model) and the tokenizer."""
    path = Path(path)
    if not path.is_dir():
        raise CramlmError(f"{path} is not a run dir or an exported HF dir")
    if not (path / "tokenizer.json").is_file():
        raise CramlmError(f"{path} has no tokenizer.json: is it a cramlm run dir or an exported HF dir?")
    if (path / "config.json").is_file() and not (path / "config.yaml").is_file():
        model, model_cfg = import_model(path)
        cfg = RunConfig(model=model_cfg)
    else:
        model, cfg = load_model(path)
    return Pretrained(model, cfg, load_tokenizer(path / "tokenizer.json"), path)
