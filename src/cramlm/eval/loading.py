"""The model an evaluation reads: a run dir (final weights, config, tokenizer), an exported HF dir, or a fine-tuned
classifier (`finetuned/<task>/` of `eval glue`, or its HF export)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer
from torch import nn

from cramlm.config import RunConfig
from cramlm.data.tokenizer import load_tokenizer
from cramlm.errors import CramlmError
from cramlm.export.hf import import_model
from cramlm.models.encoder import EncoderForSequenceClassification
from cramlm.train.checkpoint import load_model


@dataclass
class Pretrained:
    model: nn.Module
    cfg: RunConfig
    tokenizer: Tokenizer
    path: Path


def load_pretrained(path: str | Path, evaluation: str) -> Pretrained:
    """The model of a run dir (final, else latest checkpoint weights) or an exported HF dir (`config.json`), in eval
    mode on CPU, with the resolved config (an HF dir gets the default sections besides its model) and the tokenizer.
    A fine-tuned classifier gives its encoder to `evaluation == "glue"` (fine-tuning it again) and is refused by
    the language-modelling evaluations: its LM head was not trained along with its encoder."""
    path = Path(path)
    if not path.is_dir():
        raise CramlmError(f"{path} is not a run dir or an exported HF dir")
    if not any((path / name).exists() for name in ("config.yaml", "final", "checkpoints", "config.json")):
        raise CramlmError(f"{path} is neither a cramlm run dir (config.yaml, final/) nor an exported HF dir "
                          f"(config.json, model.safetensors)")
    if not (path / "tokenizer.json").is_file():
        raise CramlmError(f"{path} has no tokenizer.json (a run dir has the one `cramlm prepare` made; "
                          f"`cramlm export` copies it into an HF dir)")
    if (path / "config.json").is_file() and not (path / "config.yaml").is_file():
        model, model_cfg = import_model(path)
        cfg = RunConfig(model=model_cfg)
    else:
        model, cfg = load_model(path)
    if isinstance(model, EncoderForSequenceClassification):
        if evaluation != "glue":
            raise CramlmError(f"{path} holds a fine-tuned sequence classifier; {evaluation} needs a pretrained "
                              f"language model (the run dir it was fine-tuned from, or that run's export)")
        model = model.encoder
    return Pretrained(model, cfg, load_tokenizer(path / "tokenizer.json"), path)

