"""The coordinate check of muP (Yang et al. 2022): does an activation's typical size stay put as the model widens?

Each width trains a few Adam steps on the same Zipf-distributed random tokens; after each step the mean absolute
value of the embedding output, every block's output and the logits is recorded. Under the standard
parametrization the updates grow with the width, and so do the later layers' activations (the logits most);
under muP the curves are flat across widths. `cramlm sweep --coord-check` prints the ratios and draws the plot.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from cramlm.config import resolve_config
from cramlm.models.registry import build_model
from cramlm.train.autopilot import random_batch
from cramlm.train.optim import build_optimizer, set_lr

WIDTHS = (64, 128, 256, 512, 1024)


def zipf_tokens(vocab: int, n: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """Token ids 5.. with Zipf(1) frequencies: text-like statistics, so training moves the weights coherently."""
    weights = 1.0 / torch.arange(1, vocab - 5 + 1, dtype=torch.float64)
    return 5 + torch.multinomial(weights, n * seq_len, replacement=True, generator=generator).view(n, seq_len)


def measure(arch: str, width: int, parametrization: str, base_width: int, depth: int = 2, steps: int = 4,
            lr: float = 1e-2, batch: int = 16, seq_len: int = 64, vocab: int = 512, seed: int = 0
            ) -> list[dict[str, Any]]:
    """Rows {parametrization, width, step, layer, mean_abs} for `steps` AdamW steps of one model."""
    from cramlm.train.sweep import model_section

    section = {**model_section(arch, depth, width, parametrization, base_width), "vocab_size": vocab,
               "max_seq_len": seq_len, "dropout": 0.0}
    cfg = resolve_config(recipe="crammed", base={"model": section},
                         overrides=[f"train.lr={lr}", "train.optimizer=adamw"])  # muP's check is Adam's rule
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    optimizer = build_optimizer(model, cfg.train.model_copy(update={"weight_decay": 0.0}))
    set_lr(optimizer, lr)
    ids = zipf_tokens(vocab, batch, seq_len, torch.Generator().manual_seed(seed))
    data = random_batch(cfg.model, seq_len, cfg.train.mask_rate, batch, torch.device("cpu"), ids=ids)
    seen: dict[str, float] = {}

    def hook(name: str):
        def record(_module: Any, _inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            seen[name] = float(out.detach().abs().mean())
        return record

    model.embed.register_forward_hook(hook("embedding"))
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(hook(f"block {i}"))
    rows = []
    for step in range(1, steps + 1):
        out = model(**data)
        seen["logits"] = float(out.logits.detach().abs().mean())
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rows += [{"parametrization": parametrization, "width": width, "step": step, "layer": k, "mean_abs": v}
                 for k, v in seen.items()]
    return rows


def coord_check(arch: str = "encoder", widths: tuple[int, ...] = WIDTHS, steps: int = 4,
                parametrizations: tuple[str, ...] = ("standard", "mup")) -> list[dict[str, Any]]:
    with torch.random.fork_rng():
        return [row for p in parametrizations for w in widths
                for row in measure(arch, w, p, base_width=widths[0], steps=steps)]


def growth(rows: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """(parametrization, layer) -> mean |activation| at the widest width / at the narrowest, at the last step."""
    last = max(r["step"] for r in rows)
    at: dict[tuple[str, str], dict[int, float]] = {}
    for r in rows:
        if r["step"] == last:
            at.setdefault((r["parametrization"], r["layer"]), {})[r["width"]] = r["mean_abs"]
    return {key: by_width[max(by_width)] / by_width[min(by_width)] for key, by_width in at.items()}


def plot(rows: list[dict[str, Any]]) -> bytes:
    """One panel per parametrization: mean |activation| at the last step against width, a line per layer."""
    from matplotlib.figure import Figure

    last = max(r["step"] for r in rows)
    params = list(dict.fromkeys(r["parametrization"] for r in rows))
    fig = Figure(figsize=(4.5 * len(params), 3.6), constrained_layout=True)
    axes = fig.subplots(1, len(params), sharey=True, squeeze=False)[0]
    for ax, p in zip(axes, params):
        layers = list(dict.fromkeys(r["layer"] for r in rows if r["parametrization"] == p))
        for layer in layers:
            pts = sorted((r["width"], r["mean_abs"]) for r in rows
                         if r["parametrization"] == p and r["layer"] == layer and r["step"] == last)
            ax.plot(*zip(*pts), marker="o", label=layer)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{p}: after {last} Adam steps")
        ax.set_xlabel("width (d_model)")
    axes[0].set_ylabel("mean |activation|")
    axes[-1].legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def save(rows: list[dict[str, Any]], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "coord_check.json").write_text(json.dumps(rows))
    (out_dir / "coord_check.png").write_bytes(plot(rows))
