"""The budget decides (issue 13): held-out loss of `cramlm train DATA --budget X` and nothing else, per budget, next
to (b) today's crammed recipe with the model the autopilot chose, (c) an oracle grid around it and (d) the
`transformers` path a user would take instead. Every model is scored on the same validation sequences and the same
15% masked positions (fixed seed 1234, 32 batches of 32), next to the unigram baseline on those positions.

    .venv/bin/python benchmarks/autopilot_quality.py [--data DIR | --source-mb 5] [--minutes 1 3 10]
        [--arms a b c d] [--grid full|reduced] [--objective mlm|causal] [--model NAME] [--work DIR] [--json PATH]
        [--table]

Per budget M minutes (RUN is a dir under `--work`/runs):

    (a) cramlm train DATA --budget Mm --out RUN [--objective causal]
    (b) cramlm train DATA --budget Mm --out RUN --model A train.batch_size=8192 train.lr=0.001
          train.micro_batch_size=128 train.optimizer=adamw (Cramming's published numbers)
    (c) cramlm train DATA --budget Mm --out RUN --model A train.batch_size=B train.lr=LR
          B x LR in {32, 128, 512} x {3e-4, 1e-3, 3e-3}, plus the family members next to A at (a)'s batch and LR;
          `--grid reduced`: only the 3-minute optimum and its 4 neighbours (one rung of batch x4 or LR ~x3 either way);
          `--grid models`: only the neighbouring family members
    (d) transformers Trainer + BertForMaskedLM of A's depth and width (heads of 64, FFN 4x),
          DataCollatorForLanguageModeling(mlm_probability=0.15), AdamW 5e-4, batch 64, linear decay after 6% warm-up,
          max_steps = (budget - an 8-step throughput probe) / steady seconds per step (transformers, accelerate)

where A is the family member (a) chose at the same budget (`--model` replaces it for arms b and d).
`--objective causal` runs arms a and b with decoders, scored by the held-out loss per token. Each row is appended
to `--json` as one JSON line and skipped when already there (a refused or failed run too: delete its line to
retry), so the benchmark runs in pieces; `--table` prints the Markdown table of everything in that file. Without
`--data`, the first `--source-mb` MB of every shard of `../shared/data/pretrain` are prepared once into `--work`
(WordPiece 8192, 128 tokens).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from quality_at_budget import SCORE, subset  # 15% masking, seed 1234, 32 batches of 32; a slice of every shard

from cramlm.config import DataConfig
from cramlm.data.prepare import prepare
from cramlm.data.store import Dataset
from cramlm.eval.heldout import _val_batches, heldout_loss, unigram_loss
from cramlm.train.checkpoint import load_model

CRAMLM = Path(sys.executable).with_name("cramlm")
CRAMMED = {"batch": 8192, "lr": 1e-3,  # Cramming's published numbers, with its AdamW
           "extra": ("train.micro_batch_size=128", "train.optimizer=adamw")}
BATCHES, LRS = (8, 32, 128, 512, 2048), (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)  # the full grid is the middle three
HF = {"batch": 64, "lr": 5e-4, "probe_steps": 8}
ARMS = {"a": "autopilot", "b": "crammed recipe, (a)'s model", "d": "HF Trainer + BertForMaskedLM"}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def neighbours(name: str) -> list[str]:
    """The family members just smaller and just larger than `name` (those that exist)."""
    from cramlm.models.family import family  # what the autopilot chooses from

    names = [m.name for m in family(name.split("-")[0])]
    if name not in names:
        raise SystemExit(f"{name} is not a member of the model family ({', '.join(names)})")
    i = names.index(name)
    return names[max(0, i - 1):i] + names[i + 1:i + 2]


@torch.no_grad()
def hf_loss(model: torch.nn.Module, ds: Dataset) -> float:
    """`heldout_loss` for a `transformers` MLM: cross-entropy over every predicted position of the same batches."""
    model.eval()
    total, count = 0.0, 0
    for batch in _val_batches(ds, "mlm", SCORE["mask_rate"], SCORE["n_batches"], SCORE["batch_size"], SCORE["seed"]):
        labels = batch["labels"].to(model.device)
        logits = model(input_ids=batch["input_ids"].to(model.device)).logits.float()
        keep = labels != -100
        total += float(F.cross_entropy(logits[keep], labels[keep], reduction="sum"))
        count += int(keep.sum())
    return total / count


class Bench:
    def __init__(self, data: Path, ds: Dataset, objective: str, work: Path, out: Path):
        self.data, self.ds, self.objective, self.work, self.out = data, ds, objective, work, out
        self.rows = read_rows(out)
        self.unigram = unigram_loss(ds, objective=objective, **SCORE)

    def select(self, minutes: float, arm: str, **match: Any) -> list[dict[str, Any]]:
        """This dataset's and objective's rows for a budget and arm with the given fields."""
        key = dict(data=str(self.data), objective=self.objective, minutes=minutes, arm=arm, **match)
        return [r for r in self.rows if all(r.get(k) == v for k, v in key.items())]

    def find(self, minutes: float, arm: str, **match: Any) -> dict[str, Any] | None:
        return next(iter(self.select(minutes, arm, **match)), None)

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        row = dict(data=str(self.data), objective=self.objective, unigram=self.unigram, **row)
        self.rows.append(row)
        with self.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{row['minutes']:g} min ({row['arm']}) {row['model']}: "
              + (f"failed: {row['error']}" if row["loss"] is None else f"loss {row['loss']:.4f}, {row['steps']} steps")
              + f", {row['wall_s']:.0f}s", flush=True)
        return row

    def cram(self, minutes: float, arm: str, model: str | None, batch: int | None = None, lr: float | None = None,
             extra: tuple[str, ...] = (), **fields: Any) -> dict[str, Any]:
        """One `cramlm train` run, scored; `model`, `batch` and `lr` None leave the choice to the autopilot."""
        run = self.work / "runs" / f"{self.objective}-{minutes:g}m-{arm}-{model or 'auto'}-b{batch}-lr{lr}"
        shutil.rmtree(run, ignore_errors=True)  # a run that an interrupted piece left without a row
        cmd = [str(CRAMLM), "train", str(self.data), "--budget", f"{minutes:g}m", "--out", str(run)]
        cmd += ["--model", model] if model else (["--objective", "causal"] if self.objective == "causal" else [])
        if batch is not None:
            cmd += [f"train.batch_size={batch}", f"train.lr={lr}", *extra]
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)  # progress goes to stdout
        wall = time.perf_counter() - t0
        sys.stderr.write(proc.stderr)
        if proc.returncode:  # e.g. a budget too small for the given micro-batch: the finding is the refusal
            error = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            return self.add(dict(minutes=minutes, arm=arm, model=model or "auto", batch=batch, lr=lr, steps=0,
                                 tokens=0, loss=None, wall_s=wall, run=str(run), error=error, **fields))
        res = json.loads((run / "results" / "train.json").read_text())
        if model is None:
            if "autopilot" not in res:
                raise SystemExit(f"{run}: no autopilot decision in results/train.json (is the autopilot in?)")
            auto = res["autopilot"]
            model, batch, lr = auto["model"], auto["batch_size"], auto["lr"]
            fields.update(micro_batch=auto["micro_batch_size"], line=auto["line"])
        trained, _ = load_model(run, DEVICE)
        loss = heldout_loss(trained, self.ds, self.objective, **SCORE)
        return self.add(dict(minutes=minutes, arm=arm, model=model, batch=batch, lr=lr, steps=res["steps"],
                             tokens=res["tokens"], loss=loss, wall_s=wall, run=str(run), **fields))

    def autopilot(self, minutes: float) -> dict[str, Any]:
        return self.find(minutes, "a") or self.cram(minutes, "a", None)

    def crammed(self, minutes: float, model: str) -> None:
        if not self.find(minutes, "b", model=model):
            self.cram(minutes, "b", model, CRAMMED["batch"], CRAMMED["lr"], CRAMMED["extra"])

    def grid(self, minutes: float, kind: str) -> None:
        a = self.autopilot(minutes)
        if kind == "full":
            points = [(b, lr) for b in BATCHES[1:4] for lr in LRS[1:4]]
        elif kind == "models":
            points = []
        else:
            a3 = self.find(3.0, "a")
            full = [r for r in (self.select(3.0, "c", model=a3["model"], grid="full") if a3 else [])
                    if r["loss"] is not None]
            if not full:
                raise SystemExit("--grid reduced needs the full grid at 3 minutes in the JSON file first")
            best = min(full, key=lambda r: r["loss"])
            i, j = BATCHES.index(best["batch"]), LRS.index(best["lr"])
            points = [(BATCHES[i], LRS[j]), (BATCHES[i - 1], LRS[j]), (BATCHES[i + 1], LRS[j]),
                      (BATCHES[i], LRS[j - 1]), (BATCHES[i], LRS[j + 1])]
        runs = [(a["model"], b, lr) for b, lr in points] + [(m, a["batch"], a["lr"]) for m in neighbours(a["model"])]
        for model, batch, lr in runs:
            if not self.find(minutes, "c", model=model, batch=batch, lr=lr):
                self.cram(minutes, "c", model, batch, lr, grid=kind)

    def hf(self, minutes: float, model: str) -> None:
        """Arm (d): the same shape as a `transformers` BERT, trained by `Trainer` for the steps the budget buys."""
        if self.find(minutes, "d", model=model):
            return
        from transformers import (BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling,
                                  PreTrainedTokenizerFast, Trainer, TrainerCallback, TrainingArguments, set_seed)

        n_layers, width = map(int, re.fullmatch(r"\w+-(\d+)x(\d+)", model).groups())
        config = BertConfig(vocab_size=self.ds.vocab_size, hidden_size=width, num_hidden_layers=n_layers,
                            num_attention_heads=max(1, width // 64), intermediate_size=4 * width,
                            max_position_embeddings=self.ds.seq_len)
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(self.ds.tokenizer_path), pad_token="[PAD]",
                                            mask_token="[MASK]", cls_token="[CLS]", sep_token="[SEP]",
                                            unk_token="[UNK]")
        run = self.work / "runs" / f"mlm-{minutes:g}m-d-{model}"
        ids = torch.from_numpy(np.asarray(self.ds.sequences("train"), dtype=np.int64))
        train_set = [{"input_ids": row} for row in ids]  # the dicts a `transformers` collator takes

        def trainer(steps: int) -> Trainer:
            set_seed(0)
            args = TrainingArguments(
                output_dir=str(run), max_steps=steps, per_device_train_batch_size=HF["batch"],
                learning_rate=HF["lr"], lr_scheduler_type="linear", warmup_steps=0.06,  # transformers 5's warmup_ratio
                save_strategy="no", report_to=[], use_cpu=DEVICE == "cpu", bf16=DEVICE == "cuda",
                dataloader_num_workers=0, logging_steps=max(1, steps // 10), disable_tqdm=True)
            return Trainer(model=BertForMaskedLM(config), args=args, train_dataset=train_set,
                           data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15))

        class StepClock(TrainerCallback):
            """Times steps as they end, so that the first (allocation, warm-up) does not count."""
            def __init__(self) -> None:
                self.ends: list[float] = []

            def on_step_end(self, *_: Any, **__: Any) -> None:
                self.ends.append(time.perf_counter())

        t0 = time.perf_counter()
        clock, probe_trainer = StepClock(), trainer(HF["probe_steps"])
        probe_trainer.add_callback(clock)
        probe_trainer.train()
        probe = (clock.ends[-1] - clock.ends[1]) / (len(clock.ends) - 2)  # steady-state seconds per step
        steps = max(1, int((minutes * 60 - (time.perf_counter() - t0)) / probe))
        print(f"HF Trainer: {probe:.2f}s per step -> max_steps {steps}", flush=True)
        final = trainer(steps)
        final.train()
        wall = time.perf_counter() - t0
        self.add(dict(minutes=minutes, arm="d", model=model, batch=HF["batch"], lr=HF["lr"], steps=steps,
                      tokens=steps * HF["batch"] * self.ds.seq_len, loss=hf_loss(final.model, self.ds), wall_s=wall,
                      run=str(run)))


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def table(rows: list[dict[str, Any]]) -> None:
    """The Markdown table of every row, per dataset and objective; arm (c) as its best point per budget."""
    for data, objective in sorted({(r["data"], r["objective"]) for r in rows}):
        group = [r for r in rows if r["data"] == data and r["objective"] == objective]
        what = "held-out MLM loss @15%" if objective == "mlm" else "held-out loss per token"
        print(f"\n{data} ({objective})\n\n| budget | arm | model | batch target | peak LR | optimizer steps | tokens | "
              f"{what} | vs unigram | wall s |\n|---|---|---|---|---|---|---|---|---|---|")
        best: dict[tuple[float, str], dict[str, Any]] = {}
        for minutes in sorted({r["minutes"] for r in group}):
            for arm in "abcd":
                mine = [r for r in group if r["minutes"] == minutes and r["arm"] == arm]
                done = [r for r in mine if r["loss"] is not None]
                if done:
                    best[minutes, arm] = min(done, key=lambda r: r["loss"])
                grids = "+".join(sorted({r.get("grid", "") for r in mine}))
                name = f"oracle grid best of {len(done)} ({grids})" if arm == "c" else ARMS[arm]
                for r in ([best[minutes, arm]] if arm == "c" and done else mine):
                    loss = "failed | " if r["loss"] is None else f"{r['loss']:.3f} | {r['loss'] - r['unigram']:+.3f}"
                    print(f"| {minutes:g} min | ({arm}) {name} | {r['model']} | {r['batch'] or ''} | "
                          f"{r['lr'] or 0:.1e} | {r['steps']:,} | {r['tokens']:,} | {loss} | {r['wall_s']:.0f} |")
        print(f"| | unigram baseline | | | | | | {group[0]['unigram']:.3f} | 0 | |\n")
        for r in group:
            if r["loss"] is None:
                print(f"{r['minutes']:g} min ({r['arm']}) {r['model']} batch {r['batch']} LR {r['lr']}: {r['error']}")
        for (minutes, arm), r in sorted(best.items()):
            if arm == "a":
                diffs = "".join(f"; (a) - ({o}) {r['loss'] - best[minutes, o]['loss']:+.3f}"
                                for o in "cd" if (minutes, o) in best)
                print(f"{minutes:g} min: {r['line']}{diffs}")
        if (10.0, "d") in best:
            target = best[10.0, "d"]["loss"]
            reached = [m for (m, arm), r in sorted(best.items()) if arm == "a" and r["loss"] <= target]
            print(f"(a) reaches (d)'s 10-minute loss {target:.3f} at "
                  + (f"{reached[0]:g} min" if reached else "none of the budgets run"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a dataset dir from `cramlm prepare` (default: prepare --source-mb)")
    ap.add_argument("--source-mb", type=float, default=5.0, help="MB read from each shard without --data (default 5)")
    ap.add_argument("--minutes", type=float, nargs="+", default=[1.0, 3.0, 10.0], help="budgets (default 1 3 10)")
    ap.add_argument("--arms", nargs="+", default=list("abcd"), choices=list("abcd"), help="subset of the arms")
    ap.add_argument("--grid", choices=["full", "reduced", "models"], default="full",
                    help="arm (c): the 3x3 grid, the points around the 3-minute optimum, or the neighbouring models")
    ap.add_argument("--objective", choices=["mlm", "causal"], default="mlm", help="causal: arms (a) and (b) only")
    ap.add_argument("--model", help="the model of arms (b) and (d) instead of (a)'s choice (e.g. encoder-4x256)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cramlm-autopilot"), help="data and run dirs")
    ap.add_argument("--json", type=Path, help="rows, one JSON object a line (default WORK/autopilot_quality.jsonl)")
    ap.add_argument("--table", action="store_true", help="only print the table of the rows in --json")
    args = ap.parse_args()
    out = args.json or args.work / "autopilot_quality.jsonl"
    if args.table:
        return table(read_rows(out))
    if args.objective == "causal" and {"c", "d"} & set(args.arms):
        ap.error("--objective causal runs arms a and b only")
    if args.model and "c" in args.arms:
        ap.error("--model replaces (a)'s choice for arms b and d only; arm c is around (a)'s run")

    data = args.data or args.work / f"pretrain-{args.source_mb:g}mb"
    if not (data / "manifest.json").is_file():
        text = subset(args.source_mb, args.work / f"pretrain-{args.source_mb:g}mb.txt")
        prepare([str(text)], data, DataConfig(seq_len=128, vocab_size=8192, val_fraction=0.02), progress=False)
    data = data.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    bench = Bench(data, Dataset(data), args.objective, args.work, out)
    print(f"{bench.ds}; torch threads {torch.get_num_threads()}; unigram {bench.unigram:.4f}", flush=True)
    for minutes in args.minutes:
        for arm in args.arms:
            if arm == "a" or not args.model and bench.autopilot(minutes)["loss"] is None:
                bench.autopilot(minutes)  # a failed (a) leaves nothing to compare with; its row says why
            elif arm == "c":
                bench.grid(minutes, args.grid)
            else:
                model = args.model or bench.autopilot(minutes)["model"]
                (bench.crammed if arm == "b" else bench.hf)(minutes, model)
    table(bench.rows)


if __name__ == "__main__":
    main()
