"""The planner's forecast vs. a real run: `plan --calibrate` for a wall-clock budget, then `train` for it.

Side by side: the tokens, FLOPs, MFU, dollars and energy the plan predicts for the budget, and what the trainer
actually processed and logged in the same budget on this machine. The ratio is the planner's error here
(evaluation, checkpoints and the final save take part of a short budget; calibration uses a small batch).

    .venv/bin/python benchmarks/plan_vs_train.py [--seconds 90] [--model tiny]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from cramlm.budget import planner
from cramlm.config import DataConfig, resolve_config
from cramlm.data.prepare import prepare
from cramlm.train.trainer import train


def dataset(vocab: int) -> Path:
    out = Path(tempfile.gettempdir()) / f"cramlm-plan-bench-{vocab}"
    if not (out / "manifest.json").is_file():
        prepare(["python-docs"], out, DataConfig(seq_len=128, vocab_size=vocab, val_fraction=0.01), progress=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=90.0, help="wall-clock budget of the run (s)")
    ap.add_argument("--model", default="tiny", help="model preset")
    ap.add_argument("--micro", type=int, default=16, help="micro-batch of the run (sequences)")
    args = ap.parse_args()

    p = planner.plan("cpu", hours=args.seconds / 3600, model=args.model, calibrate_steps=2)
    cfg = planner.plan_config(p)
    data = dataset(cfg.model.vocab_size)
    cfg = resolve_config(base=cfg.model_dump(mode="json"), overrides=[
        f"train.micro_batch_size={args.micro}", f"train.batch_size={4 * args.micro}", "train.log_every=2",
        "train.val_every=100000steps", "train.checkpoint_every=100000steps", "train.val_batches=2"])
    with tempfile.TemporaryDirectory() as tmp:
        r = train(cfg, data, Path(tmp) / "run", progress=False)

    rows = [("seconds", p["hours"] * 3600, r["seconds"]), ("tokens", p["tokens"], r["tokens"]),
            ("FLOPs", p["flops"], r["flops"]),
            ("MFU", p["mfu"], r["mfu"]), ("tokens/s", p["tokens"] / (p["hours"] * 3600), r["tokens_per_second"]),
            ("USD", p["cost_usd"], r["cost"]["usd"]), ("kWh", p["energy_kwh"], r["cost"]["kwh"])]
    print(f"model {args.model}, budget {args.seconds:g}s on {p['hardware']['name']} "
          f"(peak {p['hardware']['peak_flops_per_s'] / 1e9:.1f} GFLOP/s fp32 measured); "
          f"calibration micro-batch {p['calibration']['micro_batch_size']}, run micro-batch {args.micro}")
    print(f"{'':10} {'planned':>12} {'measured':>12} {'measured/planned':>17}")
    for name, planned, measured in rows:
        print(f"{name:10} {planned:12.4g} {measured:12.4g} {measured / planned:17.2f}")


if __name__ == "__main__":
    main()
