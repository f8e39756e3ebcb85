"""The offline demo: prepare the embedded python-docs corpus, cram a small encoder, and show it learned.

Every stage is the real one (`prepare`, `train`, held-out evaluation); only the sizes are shrunk to two CPU cores
and a few minutes. The trained model must beat two baselines scored on the same held-out masked positions: the
untrained model (ln V) and a unigram model of the training tokens (what a model learns first).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from cramlm.config import RunConfig, resolve_config
from cramlm.data.prepare import prepare
from cramlm.data.store import Dataset
from cramlm.data.tokenizer import load_tokenizer
from cramlm.eval.fill_mask import fill_mask
from cramlm.eval.heldout import heldout_loss, unigram_loss
from cramlm.models.registry import build_model
from cramlm.train.checkpoint import load_model
from cramlm.train.trainer import train

EVAL_MASK_RATE = 0.15  # the scoring protocol of every held-out MLM figure cramlm prints
EVAL_SEED = 1234


@dataclass
class DemoResult:
    run_dir: Path
    trained_loss: float
    untrained_loss: float
    unigram_loss: float


def demo_config(budget: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    return resolve_config(model="tiny", recipe="demo", overrides=[f"budget.limit={budget}", *overrides])


def run_demo(
    out_dir: Path,
    budget: str = "4m",
    sources: list[str] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    eval_batches: int = 8,
    console: Console | None = None,
) -> DemoResult:
    console = console or Console()
    cfg = demo_config(budget, overrides)
    out_dir = Path(out_dir)
    data_dir = out_dir / "data"

    console.rule("[bold]1/3 prepare[/]: the python-docs corpus -> WordPiece tokens -> packed shards")
    manifest = prepare(sources or ["python-docs"], data_dir, cfg.data, progress=True, force=True)  # the demo owns it
    console.print(
        f"{manifest['documents']:,} documents, {manifest['tokens']:,} tokens, vocab {manifest['vocab_size']:,}, "
        f"{manifest['splits']['train']['sequences']:,} train / {manifest['splits']['val']['sequences']:,} held-out sequences of "
        f"{manifest['seq_len']}"
    )

    run_dir = out_dir / time.strftime("run-%Y%m%d-%H%M%S")
    console.rule(f"[bold]2/3 train[/]: crammed encoder ({cfg.model.n_layers} layers, d {cfg.model.d_model}), "
                 f"budget {cfg.budget.limit}")
    summary = train(cfg, data_dir, run_dir, progress=True)

    console.rule("[bold]3/3 evaluate[/]: held-out MLM loss on the same masked positions (15%)")
    dataset = Dataset(data_dir)
    model, run_cfg = load_model(run_dir)
    score = dict(dataset=dataset, objective="mlm", mask_rate=EVAL_MASK_RATE, n_batches=eval_batches,
                 batch_size=32, seed=EVAL_SEED)
    trained = heldout_loss(model, **score)
    torch.manual_seed(run_cfg.train.seed)
    untrained = heldout_loss(build_model(run_cfg.model), **score)
    unigram = unigram_loss(dataset, mask_rate=EVAL_MASK_RATE, n_batches=eval_batches, batch_size=32,
                           seed=EVAL_SEED)
    result = DemoResult(run_dir, trained, untrained, unigram)
    _print_scores(console, result, summary)
    _print_fill_mask(console, model, dataset)
    return result


def _print_scores(console: Console, r: DemoResult, summary: dict) -> None:
    table = Table(title="held-out masked-token loss (nats, lower is better)")
    table.add_column("model")
    table.add_column("loss", justify="right")
    table.add_column("perplexity", justify="right")
    for name, loss in [("untrained encoder", r.untrained_loss), ("unigram baseline", r.unigram_loss),
                       ("crammed encoder", r.trained_loss)]:
        table.add_row(name, f"{loss:.3f}", f"{np.exp(loss):,.1f}")
    console.print(table)
    console.print(
        f"trained {summary.get('steps', 0):,} steps on {summary.get('tokens', 0):,} tokens in "
        f"{summary.get('seconds', 0):.0f} s ({summary.get('tokens_per_second', 0):,.0f} tokens/s)"
    )
    console.print(f"the crammed encoder {verdict(r.unigram_loss - r.trained_loss)}; run dir: {r.run_dir}")


def verdict(margin: float) -> str:
    """How the crammed encoder did against the unigram baseline, `margin` nats lower; the number is never negative."""
    if margin > 0:
        return f"[green]beats[/] the unigram baseline by {margin:.3f} nats"
    if margin < 0:
        return f"[red]does not beat[/] the unigram baseline: {-margin:.3f} nats worse"
    return "[red]does not beat[/] the unigram baseline: the same loss"


def _print_fill_mask(console: Console, model: torch.nn.Module, dataset: Dataset, n: int = 4) -> None:
    """Mask one whole word in a few held-out sentences and show the model's top guesses."""
    tokenizer = load_tokenizer(dataset.tokenizer_path)
    table = Table(title="fill-mask on held-out text")
    table.add_column("context")
    table.add_column("answer")
    table.add_column("top-5 predictions")
    for context, answer in _held_out_cloze(dataset, tokenizer, n):
        guesses = fill_mask(model, tokenizer, context, top_k=5)[0]
        shown = ", ".join(f"[bold]{w}[/]" if w == answer else w for w, _ in guesses)
        table.add_row(context, answer, shown)
    console.print(table)


def _held_out_cloze(dataset: Dataset, tokenizer, n: int) -> list[tuple[str, str]]:
    """Pick n held-out windows and blank one common whole word (a full-word token of 4+ letters) in each."""
    val = dataset.sequences("val")
    rng = np.random.default_rng(EVAL_SEED)
    picks: list[tuple[str, str]] = []
    for row in rng.permutation(len(val))[: 20 * n]:
        ids = [int(t) for t in val[row][16:56]]
        words = [(i, tokenizer.id_to_token(t)) for i, t in enumerate(ids)]
        candidates = [i for i, w in words[8:-8] if w and w.isalpha() and len(w) >= 4
                      and not tokenizer.id_to_token(ids[i + 1]).startswith("##")]
        if not candidates or any(t < 5 for t in ids):
            continue
        i = int(rng.choice(candidates))
        answer = tokenizer.id_to_token(ids[i])
        masked = ids[:i] + [4] + ids[i + 1:]
        context = tokenizer.decode(masked, skip_special_tokens=False)
        picks.append((context, answer))
        if len(picks) == n:
            break
    return picks
