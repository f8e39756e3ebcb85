"""`cramlm export`: a run's model as a plain transformers checkpoint (no trust_remote_code needed)."""

from __future__ import annotations

from pathlib import Path

import typer

from cramlm.errors import CramlmError


def command(
    run_dir: Path = typer.Argument(..., help="Run dir from `cramlm train` (final/ weights, else the latest checkpoint)."),
    to: Path = typer.Option(..., "--to", help="Directory to write the transformers checkpoint and tokenizer into."),
    force: bool = typer.Option(False, "--force", help="Write into a directory that is not empty. Default: refuse."),
    verify: bool = typer.Option(
        True, "--verify/--no-verify",
        help="Reload the export with transformers and compare logits on random tokens. Default: on.",
    ),
) -> None:
    """Export an encoder as ModernBERT or BERT and a decoder as Llama, with the exact same maths."""
    from transformers.utils import logging as hf_logging

    from cramlm.export.hf import export_run

    hf_logging.disable_progress_bar()

    if to.exists() and any(to.iterdir()) and not force:
        raise CramlmError(f"{to} is not empty (use --force to write into it)")
    result = export_run(run_dir, to, verify=verify)
    auto = {"MaskedLM": "AutoModelForMaskedLM", "CausalLM": "AutoModelForCausalLM"}
    loader = next((v for k, v in auto.items() if result["architecture"].endswith(k)),
                  "AutoModelForSequenceClassification")
    tokenizer = " + tokenizer" if result["tokenizer"] else " (no tokenizer.json in the run dir)"
    typer.echo(f"{to}: {result['architecture']}{tokenizer}; load with transformers.{loader}.from_pretrained('{to}')")
    if verify:
        typer.echo(f"verified: max |logit difference| vs cramlm = {result['max_abs_diff']:.2e}")
