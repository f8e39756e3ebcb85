"""ROUGE of what a decoder writes: generate a response to each prompt, score it against the reference.

ROUGE-1/2/L F1 come from Google's `rouge-score` package (the reference implementation papers report; Porter
stemming on, its default tokenizer: lowercase, alphanumeric tokens), averaged over the examples. Beside the model,
the same examples are scored for two lead baselines that need no model: the prompt's first sentence (lead-1) and
its first N words (N = the references' mean length, unless given). Prompts are laid out as fine-tuning laid them out
(`[SEP] prompt [SEP]`, `finetune/pairs.py`), cut to their first tokens where they would not leave room for the
answer; decoding is greedy and stops at `[SEP]`.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from cramlm.data.tokenizer import PAD_ID, SEP_ID
from cramlm.errors import CramlmError
from cramlm.eval.progress import LoopProgress, tracked
from cramlm.eval.results import Result, result_key

TYPES = ("rouge1", "rouge2", "rougeL")
# Abbreviations whose period does not end a sentence ("St. Louis", "Dr. Smith", "U.S. Army", "c. 1200").
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "gen", "col", "lt", "capt", "sgt", "gov",
                  "rev", "mt", "ft", "no", "vs", "etc", "inc", "ltd", "co", "corp", "jan", "feb", "mar", "apr",
                  "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "c", "ca", "approx", "e.g", "i.e",
                  "u.s", "u.k", "u.n", "a.d", "b.c"}
_END = re.compile(r"[.!?][\"')\]]*\s+")


def scorer(use_stemmer: bool = True) -> Any:
    """The `rouge_score` scorer for ROUGE-1/2/L, or a one-line error when the optional package is missing."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise CramlmError("eval rouge needs the rouge-score package: pip install 'cramlm[rouge]' "
                          "(or pip install rouge-score)") from None
    return rouge_scorer.RougeScorer(list(TYPES), use_stemmer=use_stemmer)


def first_sentence(text: str) -> str:
    """The first sentence of `text` (its first line at most): up to the first . ! or ? followed by a space, unless
    the period closes an abbreviation or an initial ("J. R. R. Tolkien")."""
    line = text.strip().split("\n", 1)[0].strip()
    for end in _END.finditer(line):
        before = line[:end.start()].rsplit(None, 1)
        word = before[-1].lower().lstrip("(\"'") if before else ""
        if line[end.start()] == "." and (word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())):
            continue
        return line[:end.end()].strip()
    return line


def first_words(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


def score_all(predictions: list[str], references: list[str], use_stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 of `predictions` against `references` (in [0, 1])."""
    rouge = scorer(use_stemmer)
    totals = dict.fromkeys(TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        for kind, score in rouge.score(reference, prediction).items():
            totals[kind] += score.fmeasure
    return {kind: total / max(1, len(predictions)) for kind, total in totals.items()}


def generate_responses(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int = 16,
                       progress: LoopProgress | None = None) -> list[str]:
    """Greedy responses of a decoder to `prompts`, each laid out as `[SEP] prompt [SEP]` in the room the model
    leaves for it (`max_seq_len - max_new_tokens + 1` tokens)."""
    from cramlm.finetune.pairs import prompt_ids
    from cramlm.generation import SamplingConfig, generate

    room = model.cfg.max_seq_len - max_new_tokens + 1
    if room < 2:
        raise CramlmError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the model's "
                          f"{model.cfg.max_seq_len} tokens")
    ids = [prompt_ids(tokenizer, p, room) for p in prompts]
    cfg = SamplingConfig(max_new_tokens=max_new_tokens)
    advance = tracked(progress, len(ids), "prompts")
    out = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        out += [tokenizer.decode(new).strip()
                for new in generate(model, chunk, cfg, eos_id=SEP_ID, pad_id=PAD_ID, batch_size=batch_size)]
        advance(len(chunk))
    return out


def evaluate_rouge(model_dir: str | Path, data_file: str | Path, *, max_new_tokens: int = 64,
                   limit: int | None = None, prompt_field: str = "prompt", response_field: str = "response",
                   lead_words: int | None = None, batch_size: int = 16, use_stemmer: bool = True,
                   progress: bool = True) -> Result:
    """ROUGE-1/2/L F1 of a decoder's greedy responses to the pairs in `data_file` (the first `limit`), with the
    lead-1 and lead-N-words baselines on the same examples; written to `model_dir/results/rouge-<data>.json`."""
    from rich.console import Console

    from cramlm.finetune.pairs import read_pairs
    from cramlm.generation import load_decoder

    if max_new_tokens < 1:
        raise CramlmError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    pairs = read_pairs(data_file, prompt_field, response_field)[:limit]
    model, tokenizer = load_decoder(model_dir)  # an encoder run is refused here, whatever is installed
    scorer(use_stemmer)  # a missing package is reported before any generation
    started = time.perf_counter()
    prompts, references = [p for p, _ in pairs], [r for _, r in pairs]
    with LoopProgress(Console(stderr=True), "rouge", enabled=progress) as bar:
        predictions = generate_responses(model, tokenizer, prompts, max_new_tokens, batch_size, bar)
    n_words = lead_words or max(1, round(mean_words(references)))
    systems = {"model": predictions, "lead1": [first_sentence(p) for p in prompts],
               f"lead{n_words}w": [first_words(p, n_words) for p in prompts]}
    scores = {name: score_all(texts, references, use_stemmer) for name, texts in systems.items()}
    metrics = {kind: scores["model"][kind] for kind in TYPES}
    for name in list(systems)[1:]:
        metrics.update({f"{name}_{kind}": scores[name][kind] for kind in TYPES})
    result = Result(
        name="rouge", model=str(model_dir), metrics=metrics, key=result_key("rouge", data_file),
        details={"examples": len(pairs),
                 "mean_words": {"reference": mean_words(references),
                                **{name: mean_words(texts) for name, texts in systems.items()}},
                 "samples": [{"prompt": p[:200], "reference": r, "model": m}
                             for p, r, m in list(zip(prompts, references, predictions))[:5]]},
        settings={"data": str(data_file), "limit": limit, "max_new_tokens": max_new_tokens, "decoding": "greedy",
                  "layout": "[SEP] prompt [SEP]", "lead_words": n_words, "use_stemmer": use_stemmer,
                  "scorer": "rouge-score", "f1": True},
        runtime_s=time.perf_counter() - started)
    result.write(model_dir)
    return result


def mean_words(texts: list[str]) -> float:
    return sum(len(t.split()) for t in texts) / len(texts)


def rouge_table(result: Result) -> Any:
    """The model and the baselines side by side, ROUGE F1 x 100."""
    from rich.table import Table

    m, n = result.metrics, result.settings["lead_words"]
    table = Table(title=f"rouge: {result.model} on {result.details['examples']} examples (F1 x 100)")
    for column in ("system", "ROUGE-1", "ROUGE-2", "ROUGE-L", "words"):
        table.add_column(column, justify="left" if column == "system" else "right")
    words = result.details["mean_words"]
    for label, prefix, key in (("model (greedy)", "", "model"), ("lead-1 sentence", "lead1_", "lead1"),
                               (f"lead-{n} words", f"lead{n}w_", f"lead{n}w")):
        table.add_row(label, *(f"{100 * m[prefix + kind]:.1f}" for kind in TYPES), f"{words[key]:.1f}")
    table.caption = f"references: {words['reference']:.1f} words on average"
    return table
