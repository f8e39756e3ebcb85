"""Batched generation with a KV cache: the prompts are fed once (left-padded), then one token per step.

Prompts are sorted by length before batching, so a batch holds prompts of similar lengths and little padding;
results come back in the caller's order.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from cramlm.errors import CramlmError
from cramlm.generation.sampling import SamplingConfig, choose, penalise, row_generators
from cramlm.generation.text import completion_text
from cramlm.models.kv_cache import KVCache

OnToken = Callable[[int, int], None]  # (prompt index, token id), for each token as it is generated


def generate(model: nn.Module, prompts: list[list[int]], cfg: SamplingConfig, *, eos_id: int | None, pad_id: int,
             on_token: OnToken | None = None, tokenizer: Tokenizer | None = None,
             batch_size: int = 16) -> list[list[int]]:
    """The new token ids of each prompt, stopped before `eos_id`, at `cfg.max_new_tokens`, or on the token that
    completes one of `cfg.stop_strings` in the decoded output (those need the `tokenizer`; the token is kept).
    A prompt longer than model.max_seq_len leaves room for is cut from the left (its latest tokens are kept)."""
    out: list[list[int]] = [[] for _ in prompts]
    for index, new in generate_batches(model, prompts, cfg, eos_id=eos_id, pad_id=pad_id, on_token=on_token,
                                       tokenizer=tokenizer, batch_size=batch_size):
        for i, tokens in zip(index, new):
            out[i] = tokens
    return out


@torch.no_grad()
def generate_batches(model: nn.Module, prompts: list[list[int]], cfg: SamplingConfig, *, eos_id: int | None,
                     pad_id: int, on_token: OnToken | None = None, tokenizer: Tokenizer | None = None,
                     batch_size: int = 16) -> Iterator[tuple[list[int], list[list[int]]]]:
    """`generate` one batch at a time, as each finishes: (indices of its prompts, their new token ids)."""
    if not prompts:
        raise CramlmError("no prompts to generate from")
    if getattr(getattr(model, "cfg", None), "arch", None) != "decoder":
        raise CramlmError("generation needs a causal decoder (an encoder fills masks: `cramlm eval fill-mask`)")
    if cfg.stop_strings and tokenizer is None:
        raise CramlmError("stop strings are matched on decoded text: pass the tokenizer")
    if batch_size < 1:
        raise CramlmError(f"batch size must be at least 1 (got {batch_size})")
    vocab = model.cfg.vocab_size
    for i, p in enumerate(prompts):
        if not p:
            raise CramlmError(f"prompt {i} has no tokens (start a prompt with the end-of-text token: "
                              f"`cramlm.generation.encode_prompt`)")
        if min(p) < 0 or max(p) >= vocab:
            raise CramlmError(f"prompt {i} holds a token id outside the vocabulary [0, {vocab})")
    # the last new token is never fed back, so prompt + max_new_tokens - 1 positions must fit
    room = model.cfg.max_seq_len - cfg.max_new_tokens + 1
    if room < 1:
        raise CramlmError(f"max_new_tokens={cfg.max_new_tokens} exceeds model.max_seq_len="
                          f"{model.cfg.max_seq_len}: no room is left for a prompt")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            rows = [prompts[i][-room:] for i in index]
            yield index, _batch(model, rows, index, cfg, eos_id, pad_id, on_token, tokenizer)
    finally:
        model.train(training)


def _next_logits(model: nn.Module, ids: Tensor, mask: Tensor | None, cache: KVCache) -> Tensor:
    """Float logits (B, V) at the last position of `ids`, fed after the cached tokens."""
    h, _, _ = model.hidden_states(ids, mask, causal=True, cache=cache)
    return model.readout(h[:, -1]).float()


def _batch(model: nn.Module, rows: list[list[int]], index: list[int], cfg: SamplingConfig, eos_id: int | None,
           pad_id: int, on_token: OnToken | None, tokenizer: Tokenizer | None) -> list[list[int]]:
    device = model.embed.tok.weight.device
    B, width, steps = len(rows), max(map(len, rows)), cfg.max_new_tokens
    ids = torch.full((B, width), pad_id, dtype=torch.long)
    mask = torch.zeros((B, width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row):] = torch.tensor(row)
        mask[r, width - len(row):] = 1
    ids, mask = ids.to(device), mask.to(device)
    cache = KVCache.for_model(model, B, width + steps - 1)
    generators = row_generators(cfg, index)
    seen = None
    if cfg.repetition_penalty != 1.0:
        seen = torch.zeros(B, model.cfg.vocab_size, dtype=torch.bool, device=device)
        seen.scatter_(1, ids, mask.bool())
    tokens = torch.zeros(B, steps, dtype=torch.long, device=device)
    lengths = [steps] * B  # output tokens per row; set when a row stops
    done = [False] * B
    logits = _next_logits(model, ids, None if bool(mask.all()) else mask, cache)
    for t in range(steps):
        if seen is not None:
            logits = penalise(logits, seen, cfg.repetition_penalty)
        nxt = choose(logits, cfg, generators)
        tokens[:, t] = nxt
        for r, token in enumerate(nxt.tolist()):
            if done[r]:
                continue
            if token == eos_id:
                lengths[r], done[r] = t, True
                continue
            if on_token is not None:
                on_token(index[r], token)
            if cfg.stop_strings and _stops(tokenizer, rows[r], tokens[r, :t + 1], cfg.stop_strings):
                lengths[r], done[r] = t + 1, True
        if all(done) or t + 1 == steps:
            break
        if seen is not None:
            seen.scatter_(1, nxt[:, None], True)
        logits = _next_logits(model, nxt[:, None], None, cache)
    return [tokens[r, :n].tolist() for r, n in enumerate(lengths)]


def _stops(tokenizer: Tokenizer, prompt: list[int], new: Tensor, stop_strings: tuple[str, ...]) -> bool:
    text = completion_text(tokenizer, prompt, new.tolist())
    return any(s in text for s in stop_strings)
