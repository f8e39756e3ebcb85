"""The decoder a generation reads: a cramlm run dir or an exported HF (Llama) dir, with its tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn

from cramlm.errors import CramlmError


def resolve_device(name: str) -> torch.device:
    """auto (CUDA when there is one), cpu, cuda, cuda:N; refused in one line when absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CramlmError(f"device {name!r} is not a device (auto, cpu, cuda, cuda:1...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CramlmError(f"device {name!r} asked for, but torch sees no CUDA device")
    return device


def load_decoder(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Tokenizer]:
    """The causal decoder of a run dir (final weights, else the latest checkpoint) or exported HF dir, in eval
    mode on `device`, and its tokenizer. An encoder is refused: it fills masks, it does not continue text."""
    from cramlm.eval.loading import load_pretrained

    device = resolve_device(device) if isinstance(device, str) else device
    pre = load_pretrained(path, "generate")
    if pre.cfg.model.arch != "decoder":
        raise CramlmError(f"{path} holds an encoder (masked LM), which does not generate text; "
                          f"try `cramlm eval fill-mask {path} 'text with a [MASK]'`")
    return pre.model.to(device).eval(), pre.tokenizer
