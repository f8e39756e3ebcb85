"""`cramlm generate`: continue prompts with a trained decoder (run dir or exported HF dir).

Prompts are generated `--batch-size` at a time (sorted by length: little padding); results print in the input
order. One prompt
on a terminal streams token by token. Timing goes to stderr, so stdout holds the completions alone.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer


class Streamer:
    """Prints a completion as it grows, holding back any tail that could still become a stop string."""

    def __init__(self, tokenizer, prompt: list[int], stop_strings: tuple[str, ...]):
        self.tokenizer, self.prompt, self.stop_strings = tokenizer, prompt, stop_strings
        self.new: list[int] = []
        self.shown = 0

    def __call__(self, _index: int, token: int) -> None:
        from cramlm.generation import completion_text

        self.new.append(token)
        self._show(completion_text(self.tokenizer, self.prompt, self.new), final=False)

    def _show(self, text: str, final: bool) -> None:
        from cramlm.generation import cut_at_stop

        safe = cut_at_stop(text, self.stop_strings)
        if not final and safe == text:
            safe = text[:len(text) - _partial_stop(text, self.stop_strings)]
        if len(safe) > self.shown:
            sys.stdout.write(safe[self.shown:])
            sys.stdout.flush()
            self.shown = len(safe)

    def finish(self, text: str) -> None:
        self._show(text, final=True)
        sys.stdout.write("\n")


def _partial_stop(text: str, stop_strings: tuple[str, ...]) -> int:
    """Length of the longest tail of `text` that is the start of a stop string."""
    return max((n for s in stop_strings for n in range(1, len(s)) if text.endswith(s[:n])), default=0)


def command(
    run_dir: Path = typer.Argument(..., help="A decoder run dir (from `cramlm train`) or an exported HF decoder."),
    prompts: Optional[list[str]] = typer.Argument(None, help="Prompts to continue; '-' reads stdin (one per line, "
                                                  "or JSON lines with --field)."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="Prompts, one per line; a .jsonl file holds "
                                        "one JSON object per line (see --field)."),
    field: Optional[str] = typer.Option(None, "--field", help="The JSON field holding the prompt (makes --file "
                                        "and stdin JSON lines). Default: prompt for a .jsonl file, none otherwise."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n", help="New tokens per prompt at most. "
                                       "Default: 64."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy; higher samples more freely. "
                                      "Default: 0."),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k most likely tokens only; 0 = all. Default: 0."),
    top_p: float = typer.Option(1.0, "--top-p", help="Sample within the smallest set of tokens holding this "
                                "probability mass; 1 = all. Default: 1."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", help="> 1 discourages tokens already "
                                             "in the prompt or output. Default: 1 (none)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed; a prompt's sample depends on it alone, not on the "
                             "batch. Default: 0."),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help="Stop a completion at this text (left out of "
                                             "the output); repeatable. The end-of-text token always stops."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Prompts generated together. "
                                   "Default: 16."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per prompt: prompt, completion, tokens "
                                 "(new tokens), seconds (wall time of its batch)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if present), cpu, cuda, cuda:N. Default: auto."),
) -> None:
    """Continue prompts with a trained decoder: greedy or sampled, with a KV cache, many prompts in batches."""
    from cramlm.data.tokenizer import PAD_ID, SEP_ID
    from cramlm.generation import (SamplingConfig, completion_text, cut_at_stop, encode_prompt, generate_batches,
                                   load_decoder)
    from cramlm.generation.prompts import read_prompts

    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         repetition_penalty=repetition_penalty, seed=seed, stop_strings=tuple(stop or ()))
    texts = read_prompts(prompts or [], file, field, sys.stdin)
    model, tokenizer = load_decoder(run_dir, device)
    ids = [encode_prompt(tokenizer, t) for t in texts]
    room = model.cfg.max_seq_len - max_new_tokens + 1
    cut = sum(len(p) > room for p in ids)
    if cut and room > 0:  # no room at all is the engine's one-line error
        print(f"note: {cut} prompt(s) longer than {room} tokens (model.max_seq_len {model.cfg.max_seq_len} - "
              f"--max-new-tokens + 1) keep their last {room} tokens", file=sys.stderr)
    stream = Streamer(tokenizer, ids[0][-room:], cfg.stop_strings) \
        if len(ids) == 1 and not as_json and sys.stdout.isatty() else None
    if stream is not None:
        sys.stdout.write(texts[0])
        sys.stdout.flush()

    new: list[list[int]] = [[] for _ in ids]
    seconds = [0.0] * len(ids)
    start = t0 = time.perf_counter()
    for batch, out in generate_batches(model, ids, cfg, eos_id=SEP_ID, pad_id=PAD_ID, tokenizer=tokenizer,
                                       batch_size=batch_size, on_token=stream):
        t1 = time.perf_counter()
        for i, tokens in zip(batch, out):
            new[i], seconds[i] = tokens, t1 - t0
        t0 = t1
    total = time.perf_counter() - start

    completions = [cut_at_stop(completion_text(tokenizer, p, n), cfg.stop_strings) for p, n in zip(ids, new)]
    if stream is not None:
        stream.finish(completions[0])
    elif as_json:
        for text, completion, tokens, s in zip(texts, completions, new, seconds):
            print(json.dumps({"prompt": text, "completion": completion, "tokens": len(tokens),
                              "seconds": round(s, 4)}, ensure_ascii=False))
    else:
        _print_plain(texts, completions)
    n_tokens = sum(map(len, new))
    print(f"{len(ids)} prompt(s), {n_tokens} new tokens in {total:.2f}s ({n_tokens / max(total, 1e-9):.1f} "
          f"tokens/s, batch size {min(batch_size, len(ids))}, {next(model.parameters()).device})", file=sys.stderr)


def _print_plain(texts: list[str], completions: list[str]) -> None:
    """Each prompt (bold on a terminal) followed by its completion; a blank line between prompts."""
    from rich.console import Console
    from rich.text import Text

    console = Console(soft_wrap=True, highlight=False)
    for n, (text, completion) in enumerate(zip(texts, completions)):
        if n:
            console.print()
        console.print(Text.assemble((text, "bold"), completion))

