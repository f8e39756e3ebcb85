"""GLUE under the Cramming protocol: fine-tune the pretrained encoder on each task with one global set of
hyper-parameters (`cfg.eval`), score the dev sets with the official metrics, average as Cramming reports it.

Data layouts read: the GLUE TSVs of `download_glue_data.py` (`DIR/<TASK>/train.tsv`, `dev.tsv`, MNLI
`dev_matched.tsv`/`dev_mismatched.tsv`; CoLA has no header) and the HF parquet files (`DIR/<task>/<split>*.parquet`
with split train, validation, validation_matched, validation_mismatched).
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from tokenizers import Tokenizer

from cramlm.config import RunConfig
from cramlm.data.tokenizer import SPECIAL_TOKENS
from cramlm.errors import CramlmError
from cramlm.eval.loading import load_pretrained
from cramlm.eval.metrics import METRICS
from cramlm.eval.progress import GlueProgress
from cramlm.eval.results import Result
from cramlm.models.encoder import EncoderForSequenceClassification
from cramlm.train.checkpoint import save_weights
from cramlm.models import mup
from cramlm.train.cuda import amp_dtype
from cramlm.train.optim import param_groups, set_lr
from cramlm.train.schedules import lr_factor

PAD, CLS, SEP = (SPECIAL_TOKENS.index(t) for t in ("[PAD]", "[CLS]", "[SEP]"))


@dataclass(frozen=True)
class Task:
    name: str
    tsv_text: tuple[str | int, ...]  # TSV columns with the one or two texts (names, or indices without header)
    tsv_label: str | int
    hf_text: tuple[str, ...]
    label_names: tuple[str, ...]  # empty = regression
    metrics: tuple[str, ...]
    main: str  # the metric that enters the GLUE average
    dev: tuple[tuple[str, str, str], ...] = (("", "dev", "validation"),)  # (suffix, TSV stem, HF split)
    header: bool = True

    @property
    def num_labels(self) -> int:
        return len(self.label_names) or 1


_NLI = ("entailment", "not_entailment")
_MNLI_DEV = (("m", "dev_matched", "validation_matched"), ("mm", "dev_mismatched", "validation_mismatched"))
TASKS: dict[str, Task] = {t.name: t for t in [
    Task("cola", (3,), 1, ("sentence",), ("unacceptable", "acceptable"), ("mcc",), "mcc", header=False),
    Task("sst2", ("sentence",), "label", ("sentence",), ("negative", "positive"), ("accuracy",), "accuracy"),
    Task("mrpc", ("#1 String", "#2 String"), "Quality", ("sentence1", "sentence2"),
         ("not_equivalent", "equivalent"), ("f1", "accuracy"), "f1"),
    Task("stsb", ("sentence1", "sentence2"), "score", ("sentence1", "sentence2"), (),
         ("pearson", "spearman"), "spearman"),
    Task("qqp", ("question1", "question2"), "is_duplicate", ("question1", "question2"),
         ("not_duplicate", "duplicate"), ("f1", "accuracy"), "f1"),
    Task("mnli", ("sentence1", "sentence2"), "gold_label", ("premise", "hypothesis"),
         ("entailment", "neutral", "contradiction"), ("accuracy",), "accuracy", dev=_MNLI_DEV),
    Task("qnli", ("question", "sentence"), "label", ("question", "sentence"), _NLI, ("accuracy",), "accuracy"),
    Task("rte", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"), _NLI, ("accuracy",), "accuracy"),
    Task("wnli", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"), ("not_entailment", "entailment"),
         ("accuracy",), "accuracy"),
]}
# Cramming (after BERT) averages the main metric of every dev set but WNLI's: MNLI-m and MNLI-mm count separately.
AVERAGE_EXCLUDES = ("wnli",)


@dataclass
class Split:
    """Examples of one task split: one or two texts each, int labels (classes) or float labels (regression)."""

    texts: list[tuple[str, ...]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> "Split":
        return self if n is None else Split(self.texts[:n], self.labels[:n])


def parse_tasks(text: str | list[str] | None) -> list[Task]:
    """`rte,mrpc` or a list of names (also `SST-2`, `all`) -> tasks in the given order."""
    names = text.split(",") if isinstance(text, str) else list(text or [])
    out = []
    for raw in names:
        key = _norm(raw)
        if key == "all":
            out += [t for t in TASKS.values() if t not in out]
            continue
        if key not in TASKS:
            raise CramlmError(f"unknown GLUE task {raw!r} (known: {', '.join(TASKS)}, all)")
        if TASKS[key] not in out:
            out.append(TASKS[key])
    if not out:
        raise CramlmError("no GLUE task given (e.g. --tasks rte,mrpc)")
    return out


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def task_dir(glue_dir: Path, task: Task) -> Path:
    """The folder of a task: `CoLA`, `SST-2`, `sst2`... matched case- and punctuation-insensitively."""
    glue_dir = Path(glue_dir)
    if not glue_dir.is_dir():
        raise CramlmError(f"GLUE dir {glue_dir} does not exist")
    for entry in sorted(glue_dir.iterdir()):
        if entry.is_dir() and _norm(entry.name) == task.name:
            return entry
    raise CramlmError(f"GLUE dir {glue_dir} has no folder for {task.name} (e.g. {glue_dir}/{task.name.upper()}/)")


def read_split(glue_dir: str | Path, task: Task, split: str) -> Split:
    """Read `train` or a dev set (`dev`, `dev_matched`...) from the TSV or the HF parquet layout."""
    folder = task_dir(Path(glue_dir), task)
    tsv = folder / f"{split}.tsv"
    if tsv.is_file():
        return _read_tsv(tsv, task)
    hf_split = "train" if split == "train" else next(h for _, stem, h in task.dev if stem == split)
    parquet = sorted(folder.glob(f"{hf_split}.parquet")) + sorted(folder.glob(f"{hf_split}-*.parquet"))
    if parquet:
        return _read_parquet(parquet, task)
    raise CramlmError(f"{folder} has neither {split}.tsv nor {hf_split}*.parquet")


def _label(value: str, task: Task, where: str) -> float | int:
    value = value.strip()
    try:
        if not task.label_names:
            return float(value)
        if value in task.label_names:
            return task.label_names.index(value)
        label = int(value)
        if 0 <= label < task.num_labels:
            return label
    except ValueError:
        pass
    raise CramlmError(f"{where}: bad {task.name} label {value!r} (expected {task.label_names or 'a number'})")


def _read_tsv(path: Path, task: Task) -> Split:
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: MRPC starts with a byte-order mark
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        columns = list(task.tsv_text) + [task.tsv_label]
        if task.header:
            header = [h.strip() for h in next(rows, [])]
            missing = [c for c in columns if c not in header]
            if missing:
                raise CramlmError(f"{path}: no column {missing[0]!r} in the header ({', '.join(header)})")
            columns = [header.index(c) for c in columns]
        need = max(columns) + 1
        texts, labels = [], []
        for line, row in enumerate(rows, start=2 if task.header else 1):
            if len(row) < need:  # a few malformed QQP/MNLI rows in the official files: skipped, as GLUE's scripts do
                continue
            texts.append(tuple(row[c] for c in columns[:-1]))
            labels.append(_label(row[columns[-1]], task, f"{path}:{line}"))
    if not labels:
        raise CramlmError(f"{path} holds no {task.name} examples")
    return Split(texts, np.asarray(labels, dtype=np.float32 if not task.label_names else np.int64))


def _read_parquet(paths: list[Path], task: Task) -> Split:
    import pyarrow.parquet as pq

    table = pq.read_table(paths[0]) if len(paths) == 1 else _concat([pq.read_table(p) for p in paths])
    missing = [c for c in (*task.hf_text, "label") if c not in table.column_names]
    if missing:
        raise CramlmError(f"{paths[0]}: no column {missing[0]!r} ({', '.join(table.column_names)})")
    labels = np.asarray(table.column("label").to_pylist())
    keep = labels >= 0  # the HF test splits carry label -1
    columns = [table.column(c).to_pylist() for c in task.hf_text]
    texts = [t for t, k in zip(zip(*columns), keep) if k]
    labels = labels[keep].astype(np.float32 if not task.label_names else np.int64)
    if not len(labels):
        raise CramlmError(f"{paths[0]} holds no labelled {task.name} examples")
    return Split(texts, labels)


def _concat(tables: list):
    import pyarrow as pa

    return pa.concat_tables(tables)


# ---------------------------------------------------------------- tokenization and batching


def encode(tokenizer: Tokenizer, split: Split, max_len: int) -> list[list[int]]:
    """`[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, the longer text truncated first to fit `max_len`."""
    columns = [[e.ids for e in tokenizer.encode_batch(list(col), add_special_tokens=False)] for col in zip(*split.texts)]
    out = []
    for parts in zip(*columns):
        budget = max_len - 1 - len(parts)
        if len(parts) == 1:
            out.append([CLS, *parts[0][:budget], SEP])
            continue
        a, b = parts
        if len(a) + len(b) > budget:
            short = min(len(a), len(b), budget // 2)
            keep_a, keep_b = (budget - short, short) if len(a) >= len(b) else (short, budget - short)
            a, b = a[:keep_a], b[:keep_b]
        out.append([CLS, *a, SEP, *b, SEP])
    return out


def length_sorted_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None = None,
                          chunk: int = 50) -> list[np.ndarray]:
    """Batches of similar length, so dynamic padding pads little. Without `rng` (evaluation) all examples are
    sorted; with it (training) they are shuffled, sorted within chunks of `chunk` batches, and the batch order is
    shuffled: the order stays random while the padding stays small."""
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), chunk * batch_size):
        part = order[start:start + chunk * batch_size]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(ids: list[list[int]], index: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the chosen examples to the longest of them: (input_ids, attention_mask with True = token)."""
    rows = [ids[i] for i in index]
    width = max(map(len, rows))
    batch = torch.full((len(rows), width), PAD, dtype=torch.long)
    for r, row in enumerate(rows):
        batch[r, :len(row)] = torch.tensor(row)
    return batch.to(device), (batch != PAD).to(device)


# ---------------------------------------------------------------- fine-tuning


def pick_device(name: str = "auto") -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def _autocast(device: torch.device):
    """bf16 on GPUs with native bf16, fp16 on older ones (see `train/cuda.py`), fp32 on CPU."""
    dtype = amp_dtype(device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@torch.no_grad()
def predict(model: EncoderForSequenceClassification, ids: list[list[int]], batch_size: int,
            device: torch.device) -> np.ndarray:
    """Class ids (argmax), or scores for regression, in the order of `ids`."""
    model.eval()
    out = np.zeros(len(ids), dtype=np.float32 if model.num_labels == 1 else np.int64)
    for index in length_sorted_batches(np.array([len(x) for x in ids]), batch_size):
        with _autocast(device):
            logits = model(*collate(ids, index, device)).logits.float()
        out[index] = (logits[:, 0] if model.num_labels == 1 else logits.argmax(-1)).cpu().numpy()
    return out


def score(task: Task, pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {name: METRICS[name](pred, labels) for name in task.metrics}


def finetune_steps(n_examples: int, batch_size: int, epochs: float) -> int:
    """Optimizer steps of one fine-tuning: `epochs` passes of `batch_size` examples, the last one possibly partial."""
    return max(1, math.ceil(epochs * math.ceil(n_examples / batch_size)))


def finetune(encoder_state: dict[str, torch.Tensor], cfg: RunConfig, task: Task, train_ids: list[list[int]],
             train_labels: np.ndarray, seed: int, device: torch.device,
             progress: GlueProgress | None = None) -> EncoderForSequenceClassification:
    """Fine-tune a fresh classifier on the pretrained encoder with `cfg.eval`: AdamW, linear warm-up, then the
    schedule down to 0 over `epochs` passes (a fractional last epoch is allowed)."""
    ev = cfg.eval
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = EncoderForSequenceClassification(cfg.model.model_copy(update={"dropout": ev.dropout}), task.num_labels)
    model.encoder.load_state_dict(encoder_state)
    model.to(device).train()
    optimizer = torch.optim.AdamW(param_groups(model, ev.weight_decay, lr_mults=mup.lr_multipliers(model, model.cfg)),
                                  lr=ev.lr)
    lengths = np.array([len(x) for x in train_ids])
    total = finetune_steps(len(train_ids), ev.batch_size, ev.epochs)
    labels = torch.as_tensor(train_labels)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype(device) == torch.float16 else None
    if progress is not None:
        progress.begin(f"{task.name} seed {seed}", total)
    step, batches = 0, []
    while step < total:
        if not batches:
            batches = length_sorted_batches(lengths, ev.batch_size, rng)
        index = batches.pop()
        set_lr(optimizer, ev.lr * lr_factor(step / total, ev.schedule, warmup=ev.warmup))
        input_ids, mask = collate(train_ids, index, device)
        target = labels[index].to(device)
        with _autocast(device):
            logits = model(input_ids, mask).logits.float()
        loss = F.mse_loss(logits[:, 0], target) if task.num_labels == 1 else F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:  # fp16: scaled so that small gradients do not underflow
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        step += 1
        if progress is not None:
            progress.step(step, loss.item())
    if progress is not None:
        progress.end()
    return model.eval()


# ---------------------------------------------------------------- the protocol


def evaluate_glue(
    model_dir: str | Path,
    glue_dir: str | Path,
    tasks: str | list[str] | None = None,
    *,
    seeds: list[int] | None = None,
    max_train_examples: int | None = None,
    overrides: dict | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> Result:
    """Fine-tune and score each task for each seed; write `results/glue.json` and `finetuned/<task>/` (the best
    seed's classifier with its config, label names and tokenizer, ready to serve). `overrides` update `cfg.eval`."""
    start = time.time()
    pre = load_pretrained(model_dir, "glue")
    if pre.cfg.model.arch != "encoder":
        raise CramlmError(f"GLUE fine-tuning needs an encoder; {model_dir} holds a {pre.cfg.model.arch}")
    ev = pre.cfg.eval.model_copy(update={k: v for k, v in (overrides or {}).items() if v is not None})
    if seeds is not None:
        ev = ev.model_copy(update={"seeds": list(seeds)})
    if max_train_examples is not None:
        ev = ev.model_copy(update={"max_train_examples": max_train_examples})
    cfg = pre.cfg.model_copy(update={"eval": ev})
    task_list = parse_tasks(tasks if tasks is not None else ev.tasks)
    device = pick_device(pre.cfg.train.device)
    max_len = min(ev.max_seq_len, pre.cfg.model.max_seq_len)
    encoder_state = {k: v.detach().clone() for k, v in pre.model.state_dict().items()}
    console = console or Console(stderr=True)

    trains = {task.name: read_split(glue_dir, task, "train").head(ev.max_train_examples) for task in task_list}
    steps = sum(finetune_steps(len(t), ev.batch_size, ev.epochs) for t in trains.values()) * len(ev.seeds)
    details, metrics = {}, {}
    with GlueProgress(console, steps, enabled=progress) as bars:
        for task in task_list:
            t0 = time.time()
            train = trains[task.name]
            devs = {suffix: read_split(glue_dir, task, stem) for suffix, stem, _ in task.dev}
            train_ids = encode(pre.tokenizer, train, max_len)
            dev_ids = {s: encode(pre.tokenizer, d, max_len) for s, d in devs.items()}
            runs: dict[str, list[dict[str, float]]] = {s: [] for s in devs}
            best = None
            for seed in ev.seeds:
                model = finetune(encoder_state, cfg, task, train_ids, train.labels, seed, device, bars)
                for s, d in devs.items():
                    runs[s].append(score(task, predict(model, dev_ids[s], 128, device), d.labels))
                first = runs[next(iter(devs))][-1][task.main]
                if best is None or first > best[0]:
                    best = (first, seed, model)
            _save_finetuned(pre, cfg, task, best[2], best[1], {s: r[ev.seeds.index(best[1])] for s, r in runs.items()})
            for s, d in devs.items():
                entry = f"{task.name}-{s}" if s else task.name
                summary = {m: _stats([r[m] for r in runs[s]]) for m in task.metrics}
                details[entry] = {"task": task.name, "main": task.main, "metrics": summary,
                                  "train_examples": len(train), "dev_examples": len(d), "seconds": time.time() - t0}
                metrics[entry] = 100 * summary[task.main]["mean"]
            done = ", ".join(f"{e} {metrics[e]:.1f}" for e in details if e.startswith(task.name))
            console.log(f"{task.name}: {done} ({time.time() - t0:.0f}s)")
            result = _result(model_dir, glue_dir, task_list, metrics, details, ev, max_len, device, start)
            result.write(model_dir)  # after every task: a long run cut short keeps what it finished
    return result


def _result(model_dir, glue_dir, task_list: list[Task], metrics: dict, details: dict, ev, max_len: int,
            device: torch.device, start: float) -> Result:
    """The GLUE result so far: the average covers the dev sets done, WNLI excluded."""
    averaged = [e for e in metrics if details[e]["task"] not in AVERAGE_EXCLUDES]
    headline = {"glue": float(np.mean([metrics[e] for e in averaged]))} if averaged else {}
    settings = {"glue_dir": str(glue_dir), "tasks": [t.name for t in task_list], "done": sorted({d["task"] for d in
                details.values()}), "averaged": averaged, "max_seq_len": max_len, "device": str(device),
                **ev.model_dump(mode="json")}
    return Result("glue", str(model_dir), {**headline, **metrics}, details, settings, time.time() - start)


def _stats(values: list[float]) -> dict:
    """Mean and (population) standard deviation over seeds, with the values themselves."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": [float(v) for v in values]}


def _save_finetuned(pre, cfg: RunConfig, task: Task, model: EncoderForSequenceClassification, seed: int,
                    dev_scores: dict) -> Path:
    """`finetuned/<task>/`: weights, config, tokenizer and task.json (labels, seed, dev scores): servable alone."""
    out = Path(pre.path) / "finetuned" / task.name
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model.cpu().state_dict(), out / "model.safetensors")
    cfg.model_copy(update={"model": model.cfg}).save(out / "config.yaml")
    shutil.copyfile(Path(pre.path) / "tokenizer.json", out / "tokenizer.json")
    info = {"task": task.name, "num_labels": task.num_labels, "label_names": list(task.label_names),
            "seed": seed, "max_seq_len": min(cfg.eval.max_seq_len, model.cfg.max_seq_len), "dev": dev_scores}
    (out / "task.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def glue_table(result: Result) -> Table:
    """The results as a rich table: one row per dev set, mean ± std over seeds, then the GLUE average."""
    table = Table(title=f"GLUE dev ({len(result.settings.get('seeds', []))} seed(s))")
    for col in ("task", "metric", "score", "all metrics", "train", "dev"):
        table.add_column(col, justify="left" if col in ("task", "metric", "all metrics") else "right")
    for entry, d in result.details.items():
        main = d["metrics"][d["main"]]
        others = ", ".join(f"{m} {100 * v['mean']:.1f}" for m, v in d["metrics"].items())
        table.add_row(entry, d["main"], f"{100 * main['mean']:.1f} ± {100 * main['std']:.1f}", others,
                      str(d["train_examples"]), str(d["dev_examples"]))
    if "glue" in result.metrics:
        table.add_row("GLUE", "average", f"{result.metrics['glue']:.1f}", f"over {', '.join(result.settings['averaged'])}",
                      "", "", style="bold")
    return table
