"""Language-modelling evaluations: sliding-window perplexity (causal), pseudo-perplexity (encoders), LAMBADA.

Conventions, so numbers sit beside published ones:
- Text is scored as one stream that starts with `[SEP]` (cramlm's end-of-text token), so the first word is
  predicted too. Windows of `max_seq_len` tokens advance by `stride` (default half a window); each token is scored
  once, with at least `window - stride` tokens of context (except in the first window).
- Per-word perplexity is exp(total NLL / words), words counted by whitespace in the original text (WikiText
  convention: comparable across tokenizers); per-token perplexity divides by our token count instead.
- LAMBADA: the target is the last whitespace-separated word; a prediction counts only when every one of its tokens
  is the greedy (argmax) choice; its perplexity is exp(-mean log P(whole word | context)).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from tokenizers import Tokenizer
from torch import nn

from cramlm.data.store import Dataset
from cramlm.data.tokenizer import SPECIAL_TOKENS
from cramlm.errors import CramlmError
from cramlm.eval.loading import Pretrained, load_pretrained
from cramlm.eval.progress import LoopProgress, tracked
from cramlm.eval.results import Result, result_key
from cramlm.train.preflight import check_same_tokenizer

PAD, CLS, SEP, MASK = (SPECIAL_TOKENS.index(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]"))


def read_utf8(path: str | Path, what: str = "text file") -> str:
    """A file's text; a binary or non-UTF-8 file is refused rather than scored as replacement characters."""
    path = Path(path)
    if not path.is_file():
        raise CramlmError(f"{what} {path} does not exist")
    data = path.read_bytes()
    if b"\0" in data:
        raise CramlmError(f"{what} {path} is binary, not text (it holds NUL bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CramlmError(f"{what} {path} is not UTF-8 text (byte {e.start}); convert it first, e.g. with "
                          f"iconv -f latin1 -t utf-8") from None


def read_text(path: str | Path) -> str:
    text = read_utf8(path)
    if not text.split():
        raise CramlmError(f"text file {path} is empty")
    return text


def count_words(text: str) -> int:
    return len(text.split())


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _perplexity(nll: float, count: int) -> float:
    return math.exp(nll / count) if count else float("nan")


# ---------------------------------------------------------------- causal: sliding window


def windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over a stream of `n_tokens` (position 0 is the
    `[SEP]` prefix and is never scored). Window starts advance by `stride`; every position 1..n-1 is scored exactly
    once, always with context inside its window (hence stride < window)."""
    if not 0 < stride < window:
        raise CramlmError(f"stride must be between 1 and {window - 1} (the window minus one), got {stride}")
    out, prev_end, begin = [], 1, 0
    while prev_end < n_tokens:
        end = min(begin + window, n_tokens)
        out.append((begin, end, prev_end))
        prev_end, begin = end, begin + stride
    return out


@torch.no_grad()
def sliding_nll(model: nn.Module, ids: list[int], window: int, stride: int, batch_size: int = 8,
                progress: LoopProgress | None = None) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of `ids[1:]` under a causal model, and the number of tokens scored."""
    device = _device(model)
    spans = windows(len(ids), window, stride)
    advance = tracked(progress, len(spans), "windows", "a larger --stride or --max-tokens is faster")
    stream = torch.tensor(ids, dtype=torch.long)
    total, count = 0.0, 0
    for i in range(0, len(spans), batch_size):
        group = spans[i:i + batch_size]
        width = max(end - begin for begin, end, _ in group)
        batch = torch.full((len(group), width), PAD, dtype=torch.long)
        targets = torch.full((len(group), width), -100, dtype=torch.long)
        for r, (begin, end, first) in enumerate(group):
            batch[r, :end - begin] = stream[begin:end]
            # logits at relative position t predict the token at t + 1
            targets[r, first - begin - 1:end - begin - 1] = stream[first:end]
        logits = model(batch.to(device)).logits.float()
        loss = F.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten(), ignore_index=-100, reduction="sum")
        total += loss.item()
        count += int((targets != -100).sum())
        advance(len(group))
    return total, count


# ---------------------------------------------------------------- encoders: pseudo-log-likelihood


@torch.no_grad()
def pseudo_nll(model: nn.Module, ids: list[int], window: int, batch_size: int = 64,
               progress: LoopProgress | None = None) -> tuple[float, int]:
    """Pseudo-log-likelihood (Salazar et al. 2020): each token masked in turn and predicted from both sides,
    within consecutive chunks `[CLS] chunk [SEP]` of `window` tokens. Returns (summed NLL, tokens scored)."""
    device = _device(model)
    chunk = window - 2
    rows, positions, answers = [], [], []
    for start in range(0, len(ids), chunk):
        piece = [CLS, *ids[start:start + chunk], SEP]
        for t in range(1, len(piece) - 1):
            masked = list(piece)
            masked[t] = MASK
            rows.append(masked)
            positions.append(t)
            answers.append(piece[t])
    advance = tracked(progress, len(rows), "tokens (one forward pass each)",
                      "--max-tokens N scores only the first N tokens")
    total = 0.0
    for i in range(0, len(rows), batch_size):
        part = rows[i:i + batch_size]
        width = max(map(len, part))
        batch = torch.full((len(part), width), PAD, dtype=torch.long)
        for r, row in enumerate(part):
            batch[r, :len(row)] = torch.tensor(row)
        where = torch.tensor(positions[i:i + batch_size])[:, None]
        out = model(batch.to(device), attention_mask=(batch != PAD).to(device), mask_positions=where.to(device))
        logits = _at_positions(out.logits, where.to(device))
        total += F.cross_entropy(logits.float(), torch.tensor(answers[i:i + batch_size], device=device),
                                 reduction="sum").item()
        advance(len(part))
    return total, len(rows)


def _at_positions(logits: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """(B, V) logits at one position per row, whether the head returned (B, k, V) or (B, L, V)."""
    if logits.shape[1] == where.shape[1]:
        return logits[:, 0]
    return logits.gather(1, where[..., None].expand(-1, -1, logits.shape[-1]))[:, 0]


def perplexity(model: nn.Module, tokenizer: Tokenizer, text: str, *, window: int, stride: int | None = None,
               max_tokens: int | None = None, batch_tokens: int = 8192, unigram: np.ndarray | None = None,
               progress: LoopProgress | None = None) -> dict:
    """Perplexity of `text`: sliding-window for a causal model, pseudo-perplexity for an encoder (its numbers are
    named `pseudo_*`: they are not comparable with a causal model's). `stride` is for causal models only.
    `max_tokens` scores only the first tokens (per-word perplexity is then left out: the word count is unknown);
    `batch_tokens` bounds the tokens per forward pass (memory). `unigram` (log P per token id) also scores the
    same tokens under that unigram model: the baseline that says what the model learned beyond token counts."""
    causal = model.cfg.arch == "decoder"
    if stride is not None and not causal:
        raise CramlmError("--stride is for causal models: an encoder's pseudo-perplexity masks and scores each "
                          "token in its own pass, in consecutive windows (bound its cost with --max-tokens)")
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    truncated = max_tokens is not None and len(ids) > max_tokens
    ids = ids[:max_tokens] if truncated else ids
    if not ids:
        raise CramlmError("the text holds no tokens")
    if causal:
        stride = stride or window // 2
        nll, count = sliding_nll(model, [SEP, *ids], window, stride, max(1, batch_tokens // window), progress)
    else:
        nll, count = pseudo_nll(model, ids, window, max(1, batch_tokens // window), progress)
    words = None if truncated else count_words(text)
    prefix = "" if causal else "pseudo_"
    out = {
        "kind": "perplexity" if causal else "pseudo-perplexity",
        "nll": nll, "tokens": count, "words": words,
        f"{prefix}token_ppl": _perplexity(nll, count),
        f"{prefix}word_ppl": _perplexity(nll, words) if words else None,
        f"{prefix}bits_per_token": nll / count / math.log(2),
        "window": window, "stride": stride,
    }
    if unigram is not None:
        base = -float(unigram[np.asarray(ids)].sum())  # every token of the text is scored once, as above
        out.update(unigram_nll=base, unigram_token_ppl=_perplexity(base, len(ids)),
                   unigram_word_ppl=_perplexity(base, words) if words else None)
    return out


# ---------------------------------------------------------------- LAMBADA


def read_lambada(path: str | Path) -> list[str]:
    """Passages from `lambada_test.jsonl` ({"text": ...} per line) or a text file with one passage per line."""
    path = Path(path)
    passages = []
    for n, line in enumerate(read_utf8(path, "LAMBADA file").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix in (".jsonl", ".json"):
            try:
                line = json.loads(line)["text"]
            except (ValueError, KeyError, TypeError):
                raise CramlmError(f"{path}:{n}: expected a JSON object with a 'text' field") from None
        if len(line.split()) < 2:
            raise CramlmError(f"{path}:{n}: a passage needs a context and a last word")
        passages.append(line)
    if not passages:
        raise CramlmError(f"LAMBADA file {path} holds no passages")
    return passages


def split_last_word(tokenizer: Tokenizer, passage: str) -> tuple[list[int], list[int]]:
    """(context ids, last-word ids): the word's tokens are those the whole passage adds to the context's."""
    context, word = passage.rstrip().rsplit(maxsplit=1)
    ctx = tokenizer.encode(context, add_special_tokens=False).ids
    full = tokenizer.encode(f"{context} {word}", add_special_tokens=False).ids
    if full[:len(ctx)] == ctx and len(full) > len(ctx):
        return ctx, full[len(ctx):]
    return ctx, tokenizer.encode(word, add_special_tokens=False).ids


@torch.no_grad()
def lambada(model: nn.Module, tokenizer: Tokenizer, passages: list[str], *, window: int,
            batch_size: int = 16, unigram: np.ndarray | None = None, progress: LoopProgress | None = None) -> dict:
    """Last-word accuracy (greedy, whole word) and last-word perplexity. A causal model reads `[SEP] context`
    and is teacher-forced through the word; an encoder sees `[CLS] context [MASK]*k [SEP]`, k = the word's length.
    `unigram` (log P per token id) adds the last-word perplexity of that context-free baseline."""
    device = _device(model)
    causal = model.cfg.arch == "decoder"
    rows, targets = [], []
    for passage in passages:
        ctx, word = split_last_word(tokenizer, passage)
        if causal:
            seq = [SEP, *ctx, *word][-window:]
            first = len(seq) - len(word)  # logits at first-1 .. predict the word
        else:
            seq = [CLS, *ctx[-(window - 2 - len(word)):], *[MASK] * len(word), SEP]
            first = len(seq) - 1 - len(word)
        rows.append(seq)
        targets.append((first, word))
    correct, logprobs = np.zeros(len(rows), dtype=bool), np.zeros(len(rows))
    order = np.argsort([len(r) for r in rows], kind="stable")
    advance = tracked(progress, len(rows), "passages", "--limit N scores only the first N")
    for i in range(0, len(order), batch_size):
        index = order[i:i + batch_size]
        width = max(len(rows[j]) for j in index)
        batch = torch.full((len(index), width), PAD, dtype=torch.long)
        for r, j in enumerate(index):
            batch[r, :len(rows[j])] = torch.tensor(rows[j])
        mask = None if causal else (batch != PAD).to(device)
        logits = model(batch.to(device), attention_mask=mask).logits
        for r, j in enumerate(index):
            first, word = targets[j]
            at = torch.arange(first, first + len(word), device=device) - (1 if causal else 0)
            rows_logp = logits[r, at].float().log_softmax(-1).cpu()
            word_t = torch.tensor(word)
            correct[j] = bool((rows_logp.argmax(-1) == word_t).all())
            logprobs[j] = float(rows_logp.gather(1, word_t[:, None]).sum())
        advance(len(index))
    out = {
        "kind": "causal" if causal else "masked",
        "examples": len(rows),
        "accuracy": float(correct.mean()),
        "ppl": float(math.exp(-logprobs.mean())),
        "mean_word_tokens": float(np.mean([len(w) for _, w in targets])),
    }
    if unigram is not None:
        out["unigram_ppl"] = float(math.exp(-np.mean([unigram[word].sum() for _, word in targets])))
    return out


# ---------------------------------------------------------------- run-dir entry points (results/*.json)


def _progress(description: str, enabled: bool) -> LoopProgress:
    """Progress on stderr, so that `--json` keeps stdout to the result."""
    return LoopProgress(Console(stderr=True), description, enabled)


def evaluate_ppl(model_dir: str | Path, text_file: str | Path, *, stride: int | None = None,
                 window: int | None = None, max_tokens: int | None = None,
                 unigram_data: str | Path | None = None, progress: bool = True) -> Result:
    """Perplexity of a run dir's model on a text file, with the unigram baseline of the training tokens of
    `unigram_data` (a dataset dir with the same tokenizer) when given; writes `results/ppl-<text>.json`."""
    start = time.time()
    pre = load_pretrained(model_dir, "ppl")
    window = min(window or pre.cfg.model.max_seq_len, pre.cfg.model.max_seq_len)
    text = read_text(text_file)
    unigram = None if unigram_data is None else _unigram_log_probs(unigram_data, pre)
    kind = "perplexity" if pre.cfg.model.arch == "decoder" else "pseudo-perplexity"
    with _progress(kind, progress) as bar:
        out = perplexity(pre.model, pre.tokenizer, text, window=window, stride=stride, max_tokens=max_tokens,
                         unigram=unigram, progress=bar)
    headline = ("token_ppl", "word_ppl", "bits_per_token", "pseudo_token_ppl", "pseudo_word_ppl",
                "pseudo_bits_per_token", "unigram_token_ppl", "unigram_word_ppl")
    metrics = {k: out[k] for k in headline if out.get(k) is not None}
    settings = {"text": str(text_file), "window": window, "stride": out["stride"], "max_tokens": max_tokens,
                "kind": out["kind"], "unigram_data": str(unigram_data) if unigram_data else None}
    details = {k: out[k] for k in ("nll", "tokens", "words", "unigram_nll") if k in out}
    result = Result("ppl", str(model_dir), metrics, details, settings, time.time() - start,
                    key=result_key("ppl", text_file))
    result.write(model_dir)
    return result


def _unigram_log_probs(data_dir: str | Path, pre: Pretrained) -> np.ndarray:
    """The add-one unigram model of a dataset dir's training tokens, refused unless its tokenizer is the model's."""
    from cramlm.eval.heldout import unigram_counts, unigram_log_probs

    return unigram_log_probs(unigram_counts(_dataset_for(data_dir, pre)))


def _dataset_for(data_dir: str | Path, pre: Pretrained) -> Dataset:
    """A dataset dir, refused unless it was made with the model's tokenizer (else its ids mean other tokens)."""
    dataset = Dataset(data_dir)
    check_same_tokenizer(dataset, pre.path / "tokenizer.json", pre.path)
    return dataset


def evaluate_lambada(model_dir: str | Path, data_file: str | Path, *, limit: int | None = None,
                     unigram_data: str | Path | None = None, progress: bool = True) -> Result:
    """LAMBADA last-word accuracy and perplexity of a run dir's model, with the unigram baseline of `unigram_data`
    (a dataset dir with the same tokenizer) when given; writes `results/lambada-<data>.json`."""
    start = time.time()
    pre = load_pretrained(model_dir, "lambada")
    passages = read_lambada(data_file)[:limit]
    unigram = None if unigram_data is None else _unigram_log_probs(unigram_data, pre)
    with _progress("lambada", progress) as bar:
        out = lambada(pre.model, pre.tokenizer, passages, window=pre.cfg.model.max_seq_len, unigram=unigram,
                      progress=bar)
    metrics = {k: out[k] for k in ("accuracy", "ppl", "unigram_ppl") if k in out}
    settings = {"data": str(data_file), "limit": limit, "kind": out["kind"],
                "unigram_data": str(unigram_data) if unigram_data else None}
    result = Result("lambada", str(model_dir), metrics, {k: out[k] for k in ("examples", "mean_word_tokens")},
                    settings, time.time() - start, key=result_key("lambada", data_file))
    result.write(model_dir)
    return result


class TextSequences:
    """A text file packed into `(n, seq_len)` token rows, read by `heldout_loss` as a dataset's `val` split."""

    def __init__(self, tokenizer_path: Path, text: str, seq_len: int, vocab_size: int):
        from cramlm.data.tokenizer import load_tokenizer

        ids = load_tokenizer(tokenizer_path).encode(text, add_special_tokens=False).ids
        n = len(ids) // seq_len
        if n == 0:
            raise CramlmError(f"the text has {len(ids)} tokens: fewer than one sequence of {seq_len}")
        self.root, self.tokenizer_path = tokenizer_path.parent, tokenizer_path
        self.seq_len, self.vocab_size = seq_len, vocab_size
        self.manifest = {"order": "none"}
        self._rows = np.asarray(ids[: n * seq_len], dtype=np.int64).reshape(n, seq_len)

    def sequences(self, split: str = "val") -> np.ndarray:
        return self._rows


def evaluate_mlm(model_dir: str | Path, *, text_file: str | Path | None = None, data_dir: str | Path | None = None,
                 mask_rate: float | None = None, batch_size: int = 32, seed: int = 0, progress: bool = True) -> Result:
    """Held-out loss of a run dir's model on a text file (packed into rows of `data.seq_len` tokens) or on a
    dataset dir's `val` split (made with the model's tokenizer; with the unigram baseline on the same positions);
    writes `results/mlm-<text or dataset>.json`. Masked positions depend only on `seed`, so runs compare on the
    very same tokens. Causal models get their next-token loss."""
    from cramlm.eval.heldout import heldout_loss, unigram_loss

    if (text_file is None) == (data_dir is None):
        raise CramlmError("give either a text file or a dataset dir to compute the held-out loss on")
    start = time.time()
    pre = load_pretrained(model_dir, "mlm")
    objective = "mlm" if pre.cfg.model.arch == "encoder" else "causal"
    mask_rate = mask_rate or pre.cfg.train.mask_rate
    if data_dir is not None:
        dataset = _dataset_for(data_dir, pre)
    else:
        seq_len = min(pre.cfg.data.seq_len, pre.cfg.model.max_seq_len)
        dataset = TextSequences(pre.path / "tokenizer.json", read_text(text_file), seq_len, pre.cfg.model.vocab_size)
    n_val = len(dataset.sequences("val"))
    n_batches = max(1, math.ceil(n_val / batch_size))
    args = dict(objective=objective, mask_rate=mask_rate, n_batches=n_batches, batch_size=batch_size, seed=seed)
    with _progress("held-out loss", progress) as bar:
        loss = heldout_loss(pre.model, dataset, **args, progress=bar)
    metrics = {"loss": loss, "ppl": math.exp(loss)}
    if data_dir is not None:
        metrics["unigram_loss"] = unigram_loss(dataset, **args)
    settings = {"text": str(text_file) if text_file else None, "data": str(data_dir) if data_dir else None,
                **args, "seq_len": dataset.seq_len}
    result = Result("mlm", str(model_dir), metrics, {"sequences": n_val}, settings, time.time() - start,
                    key=result_key("mlm", data_dir if data_dir is not None else text_file))
    result.write(model_dir)
    return result
