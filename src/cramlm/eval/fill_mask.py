"""Top-k fill-mask predictions of an encoder: what the demo shows to make a crammed model tangible."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer
from torch import nn

from cramlm.data.tokenizer import SPECIAL_TOKENS
from cramlm.errors import CramlmError

CLS, SEP, MASK = (SPECIAL_TOKENS.index(t) for t in ("[CLS]", "[SEP]", "[MASK]"))


@torch.no_grad()
def fill_mask(model: nn.Module, tokenizer: Tokenizer, text: str, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """For each `[MASK]` in `text`, the `top_k` most probable tokens with their probabilities, best first.
    Special tokens are never proposed."""
    if model.cfg.arch != "encoder":
        raise CramlmError("fill-mask needs an encoder (masked-LM) model")
    ids = tokenizer.encode(text, add_special_tokens=False).ids[: model.cfg.max_seq_len - 2]
    ids = [CLS, *ids, SEP]
    where = [i for i, t in enumerate(ids) if t == MASK]
    if not where:
        raise CramlmError("the text holds no [MASK] to fill")
    device = next(model.parameters()).device
    positions = torch.tensor([where], device=device)
    logits = model(torch.tensor([ids], device=device), mask_positions=positions).logits[0].float()
    if logits.shape[0] != len(where):  # a dense head returns every position
        logits = logits[positions[0]]
    logits[:, : len(SPECIAL_TOKENS)] = float("-inf")
    probs, tokens = logits.softmax(-1).topk(top_k, dim=-1)
    return [[(tokenizer.id_to_token(int(t)), float(p)) for t, p in zip(row_t, row_p)]
            for row_t, row_p in zip(tokens, probs)]
