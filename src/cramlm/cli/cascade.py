"""`cramlm cascade`: serve a fine-tuned classifier behind cheap first stages (fit, predict, report)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from cramlm.cli.help import Command, Group
from cramlm.errors import CramlmError

app = typer.Typer(help="Cascade inference: a cheap first stage answers what it is sure of, the transformer the rest.",
                  no_args_is_help=True, cls=Group)


@app.command("fit", cls=Command)
def fit(
    ft_dir: Path = typer.Argument(..., help="Fine-tuned classifier dir, e.g. RUN_DIR/finetuned/sst2 "
                                            "(kept by `cramlm eval glue`)."),
    task: Path = typer.Option(..., "--task", help="GLUE-style task folder with train.tsv and dev.tsv, "
                                                 "e.g. data/glue/SST-2."),
    out: Path = typer.Option(..., "--out", help="Directory to write the cascade to."),
    max_drop: float = typer.Option(0.5, "--max-drop", min=0.0,
                                   help="Largest dev accuracy loss allowed vs the transformer alone, in points. "
                                        "Default: 0.5."),
    rules: Optional[Path] = typer.Option(None, "--rules", help="YAML list of {pattern: REGEX, label: LABEL} "
                                                               "tried before the linear stage. Default: none."),
    linear: bool = typer.Option(True, "--linear/--no-linear", help="Use the hashed n-gram linear stage. Default: on."),
    max_train_examples: Optional[int] = typer.Option(None, "--max-train-examples", min=1,
                                                     help="Train the linear stage on the first N examples "
                                                          "Default: all."),
    small: Optional[Path] = typer.Option(None, "--small",
                                         help="A smaller fine-tuned classifier of the same task, tried after the "
                                              "linear stage (e.g. SMALL_RUN/finetuned/sst2, from `cramlm cascade "
                                              "shrink` + `cramlm eval glue`). Default: none."),
    hash_bits: int = typer.Option(19, "--hash-bits", min=8, max=24,
                                  help="Hashed features per n-gram kind (word, char) = 2**bits. Default: 19 "
                                       "(4 MB of weights per label column)."),
) -> None:
    """Train the first stages, calibrate their thresholds on the dev split, write the cascade."""
    from cramlm.cascade.fit import fit_cascade
    from cramlm.cascade.linear import HashingParams
    from cramlm.cascade.report import summary_rows

    cascade = fit_cascade(ft_dir, task, out, max_drop, rules, linear, max_train_examples,
                          HashingParams(n_features=2**hash_bits), small, log=lambda m: typer.echo(m, err=True))
    for name, value in summary_rows(cascade.calibration):
        typer.echo(f"{name}: {value}")
    typer.echo(f"cascade written to {out}")


@app.command("shrink", cls=Command)
def shrink(
    run_dir: Path = typer.Argument(..., help="Pretrained run dir (from `cramlm train`) to take the layers from."),
    layers: int = typer.Option(..., "--layers", min=1, help="Keep the first N transformer layers (N below the "
                                                            "run's own count)."),
    out: Path = typer.Option(..., "--out", help="New run dir to write (final/ + tokenizer.json)."),
) -> None:
    """Make a smaller run dir from the first layers of a pretrained encoder, to fine-tune as the --small stage."""
    from cramlm.cascade.small import shrink_run

    typer.echo(f"wrote {shrink_run(run_dir, layers, out)}: fine-tune it with `cramlm eval glue {out} --tasks TASK`, "
               f"then pass {out}/finetuned/TASK to `cramlm cascade fit --small`")


@app.command("predict", cls=Command)
def predict(
    cascade_dir: Path = typer.Argument(..., help="Cascade dir written by `cramlm cascade fit`."),
    input: str = typer.Option("-", "--input", "-i", help="TSV (with header), JSONL or plain lines; - reads "
                                      "stdin. Default: -."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Inputs per batch. Default: 256."),
    max_chars: int = typer.Option(10_000, "--max-chars", min=1,
                                  help="Longer texts are truncated to this many characters and counted. "
                                       "Default: 10000."),
    transformer: Optional[Path] = typer.Option(None, "--transformer",
                                               help="Fine-tuned classifier dir to use instead of the one the "
                                                    "cascade names."),
) -> None:
    """Print `line<TAB>label<TAB>stage` per input; a summary (and accuracy, if labels are given) goes to stderr."""
    from cramlm.cascade.core import Cascade
    from cramlm.cascade.inputs import InputStats, read_inputs, task_fields
    from cramlm.cascade.transformer import load_transformer

    model = Cascade.load(cascade_dir, load_transformer(transformer) if transformer else None)
    stats = InputStats()
    names = model.stage_names
    counts = np.zeros(len(names), dtype=np.int64)
    correct = labelled = 0
    for batch in read_inputs(input, task_fields(model.task, model.labels), batch_size, max_chars, stats):
        pred, by = model.predict([r.text for r in batch])
        counts += np.bincount(by, minlength=len(names))
        typer.echo("\n".join(f"{r.line}\t{model.labels[p]}\t{names[b]}" for r, p, b in zip(batch, pred, by)))
        gold = [(r.label, p) for r, p in zip(batch, pred) if r.label is not None]
        labelled += len(gold)
        correct += sum(g == p for g, p in gold)
    total = int(counts.sum())
    if total == 0:
        raise CramlmError(f"no input to predict in {'stdin' if input == '-' else input}"
                          + (f" ({stats.empty} empty line(s) skipped)" if stats.empty else ""))
    parts = [f"{total} inputs: " + ", ".join(f"{n} {100 * c / total:.1f}%" for n, c in zip(names, counts))]
    if stats.empty:
        lines = ", ".join(map(str, stats.empty_lines[:5])) + (", ..." if stats.empty > 5 else "")
        parts.append(f"skipped {stats.empty} empty input(s) (line {lines})")
    if stats.truncated:
        parts.append(f"truncated {stats.truncated} input(s) over {max_chars} characters")
    cut = getattr(model.transformer, "truncated", 0)
    if cut:
        parts.append(f"{cut} input(s) cut to the transformer's {model.transformer.max_len} tokens")
    if labelled:
        parts.append(f"accuracy {100 * correct / labelled:.2f} on {labelled} labelled inputs")
    print("; ".join(parts), file=sys.stderr)


@app.command("report", cls=Command)
def report(
    cascade_dir: Path = typer.Argument(..., help="Cascade dir written by `cramlm cascade fit`."),
    out: Path = typer.Option(..., "--out", help="curve.png / .svg / .pdf, or curve.html (plot + figures)."),
) -> None:
    """Draw the accuracy-vs-compute curve over thresholds, with the calibrated point."""
    from cramlm.cascade.report import write_report

    typer.echo(f"wrote {write_report(cascade_dir, out)}")
