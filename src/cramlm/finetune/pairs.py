"""Prompt/response pairs: reading the JSONL file and the one token layout fine-tuning and generation share.

A pair is laid out as `[SEP] prompt [SEP] response [SEP]`: `[SEP]` is cramlm's end-of-text token, so the prompt
starts the way `cramlm generate` starts every prompt (`generation.encode_prompt`), reads as a finished document,
and the response as the next one, ended the way pretraining ends documents. A fine-tuned model is prompted with
`prompt_ids(...)` (`[SEP] prompt [SEP]`) and stops when it writes `[SEP]`.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from cramlm.data.tokenizer import SEP_ID
from cramlm.errors import CramlmError
from cramlm.eval.lm import read_utf8


def read_pairs(path: str | Path, prompt_field: str = "prompt",
               response_field: str = "response") -> list[tuple[str, str]]:
    """(prompt, response) of every non-blank line of a JSONL file; any bad line is refused with its number."""
    text = read_utf8(path, "pairs file")
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CramlmError(f"{path} line {number} is not JSON ({e.msg}): one object per line, e.g. "
                              f'{{"{prompt_field}": "...", "{response_field}": "..."}}') from None
        if not isinstance(record, dict):
            raise CramlmError(f"{path} line {number} is a JSON {type(record).__name__}, not an object with "
                              f"{prompt_field!r} and {response_field!r}")
        for name in (prompt_field, response_field):
            if name not in record:
                have = ", ".join(sorted(record)) or "none"
                raise CramlmError(f"{path} line {number} has no {name!r} field (it has: {have}); name the fields "
                                  f"with --prompt-field / --response-field")
            if not isinstance(record[name], str):
                raise CramlmError(f"{path} line {number}: {name!r} is a {type(record[name]).__name__}, not a string")
        if not record[response_field].strip():
            raise CramlmError(f"{path} line {number}: {response_field!r} is empty (nothing to learn)")
        pairs.append((record[prompt_field], record[response_field]))
    if not pairs:
        raise CramlmError(f"pairs file {path} holds no examples (one JSON object per line)")
    return pairs


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def prompt_ids(tokenizer: Tokenizer, prompt: str, max_tokens: int | None = None) -> list[int]:
    """`[SEP] prompt [SEP]`, the prompt cut to its first tokens so that the whole is at most `max_tokens`."""
    head = [SEP_ID, *encode(tokenizer, prompt)]  # as `generation.encode_prompt` starts every prompt
    if max_tokens is not None:
        if max_tokens < 2:
            raise CramlmError(f"a prompt needs room for at least 2 tokens (two [SEP]), got {max_tokens}")
        head = head[:max_tokens - 1]
    return [*head, SEP_ID]


def pair_ids(tokenizer: Tokenizer, prompt: str, response: str, max_len: int) -> tuple[list[int], int] | None:
    """(ids, prompt length) of `[SEP] prompt [SEP] response [SEP]` in at most `max_len` tokens; the prompt is cut
    to make room, the response never. None when the response alone does not fit."""
    answer = [*encode(tokenizer, response), SEP_ID]
    room = max_len - len(answer)
    if room < 2:  # the [SEP]s around the prompt, however short
        return None
    head = prompt_ids(tokenizer, prompt, room)
    return head + answer, len(head)
