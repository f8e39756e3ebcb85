"""`cramlm eval`: downstream and language-modelling evaluations of a run dir or an exported HF dir.

Each subcommand writes `RUN_DIR/results/<name>-<input>.json` (one file per text or dataset scored; GLUE:
`results/glue.json`; one schema, see docs/eval.md), prints a table, or with `--json` the same result as JSON.
Progress and time estimates go to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from cramlm.cli.help import Command, Group
from cramlm.errors import CramlmError

app = typer.Typer(help="Evaluate a trained model: GLUE, perplexity, LAMBADA, MLM loss, fill-mask, ROUGE.",
                  no_args_is_help=True, cls=Group)

RUN_DIR = typer.Argument(..., help="A run dir (from `cramlm train`) or an exported HF dir.")
JSON = typer.Option(False, "--json", help="Print the result as JSON (the content of its results file).")


def _ints(text: Optional[str], option: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CramlmError(f"{option} {text!r} must be comma-separated integers, e.g. 0,1,2") from None


def _show(result, as_json: bool, table: Table | None = None) -> None:
    if as_json:
        print(result.to_json())
        return
    if table is None:
        table = Table(title=f"{result.name}: {result.model}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in {**result.metrics, **result.details}.items():
            table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
        if result.settings.get("kind") == "pseudo-perplexity":
            table.caption = "pseudo-perplexity (encoder): not comparable with a causal model's perplexity"
    console = Console()
    console.print(table)
    console.print(f"written: {result.path(result.model)} ({result.runtime_s:.0f}s)")


@app.command("glue", cls=Command)
def glue(
    run_dir: Path = RUN_DIR,
    glue_dir: Path = typer.Option(..., "--glue-dir", help="GLUE data: DIR/<TASK>/train.tsv, dev.tsv (the "
                                  "download_glue_data.py layout) or DIR/<task>/<split>*.parquet (HF)."),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated tasks (cola, sst2, mrpc, stsb, "
                                        "qqp, mnli, qnli, rte, wnli) or all. Default: eval.tasks of the run "
                                        "config (all but WNLI)."),
    max_train_examples: Optional[int] = typer.Option(None, "--max-train-examples", min=1, help="Fine-tune on "
                                                     "the first N training examples of each task. Default: all."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated fine-tuning seeds; mean and std "
                                        "are reported over them. Default: eval.seeds (0)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Fine-tuning epochs. Default: eval.epochs (5)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate. Default: eval.lr (4e-5)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Examples per step. Default: "
                                             "eval.batch_size (16)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar per task. Default: on."),
    as_json: bool = JSON,
) -> None:
    """Fine-tune on GLUE tasks under the Cramming protocol and score the dev sets."""
    from cramlm.eval.glue import evaluate_glue, glue_table

    result = evaluate_glue(run_dir, glue_dir, tasks, seeds=_ints(seeds, "--seeds"),
                           max_train_examples=max_train_examples,
                           overrides={"epochs": epochs, "lr": lr, "batch_size": batch_size},
                           progress=progress and not as_json)
    _show(result, as_json, glue_table(result))


@app.command("ppl", cls=Command)
def ppl(
    run_dir: Path = RUN_DIR,
    text: Path = typer.Option(..., "--text", help="UTF-8 text file to score (e.g. wikitext-2-raw/test.txt)."),
    stride: Optional[int] = typer.Option(None, "--stride", min=1, help="Causal models only: tokens each window "
                                         "advances, below the window (e.g. 64 for a 128-token model); smaller = "
                                         "more context per token, slower. Default: half the window."),
    window: Optional[int] = typer.Option(None, "--window", min=2, help="Tokens per window, at most model.max_seq_len. "
                                         "Default: model.max_seq_len."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Score only the first N tokens "
                                             "(pseudo-perplexity of encoders costs one forward pass per token; a "
                                             "long one prints its time estimate first). Default: all."),
    unigram: Optional[Path] = typer.Option(None, "--unigram", help="Dataset dir from `cramlm prepare` with the "
                                           "model's tokenizer: also report the perplexity of its add-one unigram "
                                           "model (training-token counts) on the same tokens. Default: none."),
    as_json: bool = JSON,
) -> None:
    """Perplexity per token and per word (sliding window); pseudo-perplexity for encoders (pseudo_* metrics)."""
    from cramlm.eval.lm import evaluate_ppl

    _show(evaluate_ppl(run_dir, text, stride=stride, window=window, max_tokens=max_tokens, unigram_data=unigram,
                       progress=not as_json), as_json)


@app.command("lambada", cls=Command)
def lambada(
    run_dir: Path = RUN_DIR,
    data: Path = typer.Option(..., "--data", help="lambada_test.jsonl ({\"text\": ...} per line) or a text file "
                              "with one passage per line."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Score only the first N passages. "
                                        "Default: all."),
    unigram: Optional[Path] = typer.Option(None, "--unigram", help="Dataset dir from `cramlm prepare` with the "
                                           "model's tokenizer: also report the last-word perplexity of its add-one "
                                           "unigram model (no context). Default: none."),
    as_json: bool = JSON,
) -> None:
    """LAMBADA: last-word accuracy (greedy, whole word) and last-word perplexity."""
    from cramlm.eval.lm import evaluate_lambada

    _show(evaluate_lambada(run_dir, data, limit=limit, unigram_data=unigram, progress=not as_json), as_json)


@app.command("fill-mask", cls=Command)
def fill_mask(
    run_dir: Path = RUN_DIR,
    text: str = typer.Argument(..., help="Text with one or more [MASK], e.g. 'Paris is the [MASK] of France.'"),
    top_k: int = typer.Option(5, "--top-k", min=1, help="Predictions per mask. Default: 5."),
) -> None:
    """Top-k predictions of an encoder for each [MASK] in TEXT."""
    from cramlm.eval.fill_mask import fill_mask as predict
    from cramlm.eval.loading import load_pretrained

    pre = load_pretrained(run_dir, "fill-mask")
    for i, options in enumerate(predict(pre.model, pre.tokenizer, text, top_k), start=1):
        print(f"[MASK] {i}: " + "  ".join(f"{token} {p:.3f}" for token, p in options))


@app.command("mlm", cls=Command)
def mlm(
    run_dir: Path = RUN_DIR,
    text: Optional[Path] = typer.Option(None, "--text", help="UTF-8 text file, packed into rows of data.seq_len "
                                        "tokens."),
    data: Optional[Path] = typer.Option(None, "--data", help="A dataset dir from `cramlm prepare` with the model's "
                                        "tokenizer: its val split, with the unigram baseline on the same positions."),
    mask_rate: Optional[float] = typer.Option(None, "--mask-rate", min=0.01, max=0.99, help="Fraction of tokens "
                                              "masked and predicted. Default: train.mask_rate of the run."),
    seed: int = typer.Option(0, "--seed", help="Masking seed: the same seed scores the same positions. Default: 0."),
    as_json: bool = JSON,
) -> None:
    """Held-out masked-LM loss (next-token loss for causal models) on a text file or a dataset's val split."""
    from cramlm.eval.lm import evaluate_mlm

    _show(evaluate_mlm(run_dir, text_file=text, data_dir=data, mask_rate=mask_rate, seed=seed,
                       progress=not as_json), as_json)


@app.command("rouge", cls=Command)
def rouge(
    run_dir: Path = RUN_DIR,
    data: Path = typer.Option(..., "--data", help="JSONL prompt/response pairs (as for `cramlm finetune`)."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Tokens written per prompt at most. "
                                       "Default: 64."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Score only the first N pairs. Default: all."),
    lead_words: Optional[int] = typer.Option(None, "--lead-words", min=1, help="N of the lead-N-words baseline. "
                                             "Default: the references' mean length in words."),
    prompt_field: str = typer.Option("prompt", "--prompt-field", help="JSON field of the prompt. Default: prompt."),
    response_field: str = typer.Option("response", "--response-field", help="JSON field of the reference. "
                                       "Default: response."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Prompts generated together. Default: 16."),
    as_json: bool = JSON,
) -> None:
    """ROUGE-1/2/L F1 of a decoder's greedy responses (`[SEP] prompt [SEP]`, stopped at [SEP]) against the
    references, beside the lead-1 and lead-N-words baselines of the prompts (needs `pip install 'cramlm[rouge]'`)."""
    from cramlm.eval.rouge import evaluate_rouge, rouge_table

    result = evaluate_rouge(run_dir, data, max_new_tokens=max_new_tokens, limit=limit, prompt_field=prompt_field,
                            response_field=response_field, lead_words=lead_words, batch_size=batch_size,
                            progress=not as_json)
    _show(result, as_json, rouge_table(result))
