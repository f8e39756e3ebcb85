"""`cramlm sweep`: tune the learning rate on narrow models, hand it to a wide one (muP transfer)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cramlm.errors import CramlmError


def command(
    args: list[str] = typer.Argument(
        None, metavar="[DATA_DIR] [SECTION.KEY=VALUE]...",
        help="The dataset dir written by `cramlm prepare`, then config overrides every trial gets "
        "(train.optimizer=muon...)."),
    budget: Optional[str] = typer.Option(None, "--budget", "-b", help="Budget of each trial: 2e6tokens (equal "
                                         "tokens at every width: the fair comparison), 1m, 300steps..."),
    widths: Optional[str] = typer.Option(None, "--widths", "-w", help="Widths (d_model) to sweep. Default: 64,128 "
                                         "(with --coord-check: 64,128,256,512,1024)."),
    lr: str = typer.Option("1e-4..1e-2", "--lr", help="LO..HI (log-spaced, --trials points) or a list "
                           "1e-3,3e-3. Default: 1e-4..1e-2."),
    trials: int = typer.Option(5, "--trials", "-n", min=2, help="Learning rates in LO..HI. Default: 5."),
    depth: int = typer.Option(4, "--depth", min=1, help="Layers of every trial. Default: 4."),
    objective: str = typer.Option("mlm", "--objective", help="mlm (encoder) or causal (decoder). Default: mlm."),
    parametrization: str = typer.Option("mup", "--parametrization", "-p", help="mup, standard or both. "
                                        "Default: mup."),
    out: Path = typer.Option(Path("runs/sweep"), "--out", "-o", help="Sweep dir (one run dir per trial and "
                             "sweep.json); an unfinished sweep there continues. Default: runs/sweep."),
    write_config: Optional[Path] = typer.Option(None, "--write-config", help="Write a recipe for the target "
                                                "model with the transferred LR (for `cramlm train --config`)."),
    target_width: Optional[int] = typer.Option(None, "--target-width", help="Width of the target model "
                                               "(recipe and cost line). Default: 4x the widest swept."),
    target_depth: Optional[int] = typer.Option(None, "--target-depth", help="Depth of the target model. "
                                               "Default: --depth."),
    coord_check: bool = typer.Option(False, "--coord-check", help="Instead of a sweep: mean |activation| per "
                                     "layer at --widths (64..1024 unless given) after a few Adam steps, standard vs "
                                     "muP; writes coord_check.json and .png in --out."),
) -> None:
    """Run a learning-rate grid at narrow widths; print the table and the best LR per width; write a recipe for
    a wide model."""
    from cramlm.train import sweep as sw

    arch = sw.default_arch(objective)
    if coord_check:
        _coord_check(arch, out, sw.parse_widths(widths) if widths else None)
        return
    positional = [a for a in (args or []) if "=" not in a]
    extra = [a for a in (args or []) if "=" in a]
    if len(positional) != 1:
        raise CramlmError("sweep needs one DATA_DIR (from `cramlm prepare`)")
    if budget is None:
        raise CramlmError("sweep needs --budget for each trial (e.g. 2e6tokens, 1m)")
    if parametrization not in ("mup", "standard", "both"):
        raise CramlmError(f"--parametrization must be mup, standard or both (got {parametrization!r})")
    params = ["standard", "mup"] if parametrization == "both" else [parametrization]
    data_dir = Path(positional[0])
    from cramlm.data.store import Dataset

    dataset = Dataset(data_dir)
    plan = sw.plan(data_dir.resolve(), budget, arch, depth, sw.parse_widths(widths or "64,128"),
                   sw.lr_grid(lr, trials), params)
    sw.trial_config(plan, plan.trials[0], extra)  # a bad override or budget fails here, before any file is written
    target = target_width or 4 * max(plan.widths)
    if write_config is not None and not write_config.parent.is_dir():
        raise CramlmError(f"--write-config {write_config}: folder {write_config.parent} does not exist")
    existing = sw.load(out)
    if existing is not None:
        if not sw.same_grid(existing, plan):
            raise CramlmError(f"{out} holds another sweep (other data, budget or grid): pick another --out")
        plan = existing
        left = sum(t.status != "completed" for t in plan.trials)
        typer.echo(f"continuing the sweep in {out}: {left} of {len(plan.trials)} trials left")
    elif out.exists() and any(out.iterdir()):
        raise CramlmError(f"{out} is not empty and holds no sweep: pick another --out")
    result = sw.run(plan, out, extra, echo=typer.echo)
    typer.echo("\nheld-out loss (* = best LR of the column)")
    for line in sw.table(result) + [""] + sw.transfer_lines(result):
        typer.echo(line)
    cost = sw.target_cost(result, target, dataset.seq_len, dataset.vocab_size)
    if cost:
        typer.echo(f"sweep cost: {cost['sweep_seconds']:.0f} s, {cost['sweep_flops']:.3g} FLOPs = "
                   f"{cost['ratio']:.2f}x one run of the {target}-wide target at the same tokens per parameter "
                   f"({cost['target_tokens']:.3g} tokens, {cost['target_flops']:.3g} FLOPs)")
    if write_config is not None:
        recipe = sw.write_recipe(result, write_config, target, target_depth)
        typer.echo(f"wrote {write_config}: {recipe['model']['n_layers']}x{target} {arch}, "
                   f"{recipe['model']['parametrization']}, lr {recipe['train']['lr']:.3g}; train it with "
                   f"cramlm train {data_dir} --config {write_config} --budget ...")


def _coord_check(arch: str, out: Path, widths: list[int] | None) -> None:
    from cramlm.train.coord_check import WIDTHS, coord_check, growth, save

    widths = tuple(widths or WIDTHS)
    if len(widths) < 2:
        raise CramlmError("--coord-check needs at least two --widths")
    typer.echo(f"coordinate check: {arch}, widths {', '.join(map(str, widths))}, standard and muP")
    rows = coord_check(arch, widths=widths)
    save(rows, out)
    ratios = growth(rows)
    layers = list(dict.fromkeys(layer for _, layer in ratios))
    typer.echo(f"mean |activation| at width {max(widths)} / at width {min(widths)} (flat = 1):")
    typer.echo(f"{'layer':<12}{'standard':>10}{'mup':>10}")
    for layer in layers:
        typer.echo(f"{layer:<12}{ratios['standard', layer]:>10.2f}{ratios['mup', layer]:>10.2f}")
    typer.echo(f"wrote {out / 'coord_check.json'} and {out / 'coord_check.png'}")
