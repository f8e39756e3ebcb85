"""Between text and token ids: how a prompt is encoded, and what text a completion adds to its prompt."""

from __future__ import annotations

from tokenizers import Tokenizer

from cramlm.data.tokenizer import SEP_ID

# Decoding a continuation alone loses the space before its first word (or keeps WordPiece's "##"): it is decoded
# after this many prompt tokens and the prompt's own text is cut off.
_CONTEXT = 16


def encode_prompt(tokenizer: Tokenizer, text: str) -> list[int]:
    """`[SEP]` + the text's tokens: in the pretraining stream a document starts after `[SEP]`, its end-of-text."""
    return [SEP_ID, *tokenizer.encode(text, add_special_tokens=False).ids]


def completion_text(tokenizer: Tokenizer, prompt: list[int], new: list[int]) -> str:
    """The text `new` adds after `prompt` (special tokens dropped)."""
    context = prompt[-_CONTEXT:]
    before, full = tokenizer.decode(context), tokenizer.decode(context + new)
    return full[len(before):] if full.startswith(before) else tokenizer.decode(new)


def cut_at_stop(text: str, stop_strings: tuple[str, ...] | list[str]) -> str:
    """`text` up to (without) the earliest stop string in it."""
    cuts = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return text[:min(cuts)] if cuts else text
