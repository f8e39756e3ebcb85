"""A decoder that writes a Wikipedia article's lead sentence from the rest of the article, scored by ROUGE against
the lead baselines, all offline on the `../shared/data/pretrain` Wikipedia shards.

    .venv/bin/python benchmarks/wiki_lead.py --work DIR [--pretrain 10m] [--finetune 4m] [--limit 200]
        [--max-new-tokens 48]

The task (written under --work, never into the repo): each article of `enwiki_2015_01` (fine-tuning pairs) and
`enwiki_2015_02` (test pairs) becomes {"prompt": the article after its first sentence (the rest of the lead
paragraph, then the body; its first 600 characters), "response": its first sentence}; articles whose first
sentence has fewer than 5 or more than 60 words are left out. The pretraining text is the first 20 MB of
`enwiki_2015_00` (other articles): no test article is seen before the test. The steps, each skipped when its output exists:

    cramlm prepare WORK/pretrain.txt --out WORK/data --vocab-size 8192 --seq-len 256
    cramlm train WORK/data --objective causal --budget 10m --out WORK/pretrained
    cramlm finetune WORK/pretrained --data WORK/lead-train.jsonl --budget 4m --out WORK/finetuned \
        train.batch_size=16 train.lr=1e-3
    cramlm eval rouge WORK/pretrained --data WORK/lead-test.jsonl --limit 200 --max-new-tokens 48
    cramlm eval rouge WORK/finetuned --data WORK/lead-test.jsonl --limit 200 --max-new-tokens 48

and prints ROUGE-1/2/L F1 of the fine-tuned model, of the pretrained model prompted the same way (what fine-tuning
adds) and of the lead-1 / lead-N-words baselines, with the time each step took.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

from cramlm.eval.results import result_key
from cramlm.eval.rouge import first_sentence

SHARDS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pretrain" / "enwiki_2015"
CRAMLM = Path(sys.executable).with_name("cramlm")
PROMPT_CHARS = 600  # ~140 tokens: room in 256 for the answer, and short enough for CPU steps
FINETUNE = ["train.batch_size=16", "train.lr=1e-3"]  # a tiny model: more, larger steps than the defaults
PRETRAIN_CHARS = 20_000_000  # the first ~20 MB of enwiki_2015_00: more than 10 CPU-minutes read


def articles(shard: Path) -> list[list[str]]:
    """Each document of a shard as its lines: the title, then one paragraph per line (see SOURCES.md)."""
    with gzip.open(shard, "rt", encoding="utf-8") as f:
        return [doc.split("\n") for doc in f.read().split("\n\n") if doc.strip()]


def lead_pair(lines: list[str]) -> dict[str, str] | None:
    """(the article after its first sentence -> its first sentence), or None for an article without a usable lead."""
    if len(lines) < 3:
        return None
    body = "\n".join(lines[1:])
    lead = first_sentence(lines[1])
    if not 5 <= len(lead.split()) <= 60 or not body.startswith(lead):
        return None
    rest = body[len(lead):].strip()
    if len(rest.split()) < 50:
        return None
    return {"prompt": rest[:PROMPT_CHARS].rsplit(" ", 1)[0], "response": lead}


def write_task(work: Path) -> None:
    for name, shard in (("lead-train", "enwiki_2015_01"), ("lead-test", "enwiki_2015_02")):
        path = work / f"{name}.jsonl"
        if path.exists():
            continue
        pairs = [p for p in map(lead_pair, articles(SHARDS / f"{shard}.txt.gz")) if p is not None]
        path.with_suffix(".tmp").write_text("".join(json.dumps(p) + "\n" for p in pairs))
        path.with_suffix(".tmp").replace(path)
        print(f"{path}: {len(pairs)} pairs from {shard}", flush=True)
    text = work / "pretrain.txt"
    if not text.exists():
        docs, size = [], 0
        for lines in articles(SHARDS / "enwiki_2015_00.txt.gz"):
            docs.append("\n".join(lines))
            size += len(docs[-1])
            if size > PRETRAIN_CHARS:
                break
        text.with_suffix(".tmp").write_text("\n\n".join(docs))
        text.with_suffix(".tmp").replace(text)


def step(name: str, done: Path, args: list[str], timings: dict[str, float]) -> None:
    """Run `cramlm ARGS` unless `done` exists; its time goes into `timings`."""
    if done.exists():
        print(f"[{name}] done already ({done})", flush=True)
        return
    print(f"[{name}] cramlm {' '.join(args)}", flush=True)
    started = time.perf_counter()
    subprocess.run([str(CRAMLM), *args], check=True)
    timings[name] = time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--pretrain", default="10m")
    ap.add_argument("--finetune", default="4m")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    write_task(work)
    data, pre, ft = work / "data", work / "pretrained", work / "finetuned"
    step("prepare", data / "manifest.json", ["prepare", str(work / "pretrain.txt"), "--out", str(data),
                                            "--vocab-size", "8192", "--seq-len", "256"], timings)
    step("pretrain", pre / "final", ["train", str(data), "--objective", "causal", "--budget", args.pretrain,
                                     "--out", str(pre)], timings)
    step("finetune", ft / "final", ["finetune", str(pre), "--data", str(work / "lead-train.jsonl"), "--budget",
                                    args.finetune, "--out", str(ft), *FINETUNE], timings)
    gen = ["--data", str(work / "lead-test.jsonl"), "--limit", str(args.limit), "--max-new-tokens",
           str(args.max_new_tokens)]
    results = {}
    for name, run in (("pretrained", pre), ("finetuned", ft)):
        out = run / "results" / f"{result_key('rouge', work / 'lead-test.jsonl')}.json"
        step(f"rouge {name}", out, ["eval", "rouge", str(run), *gen], timings)
        results[name] = json.loads(out.read_text())
    ft_res = results["finetuned"]
    lead = ft_res["settings"]["lead_words"]
    rows = [("fine-tuned decoder (greedy)", "", ft_res["metrics"]),
            ("pretrained decoder, no fine-tuning (greedy)", "", results["pretrained"]["metrics"]),
            ("lead-1 (first sentence of the prompt)", "lead1_", ft_res["metrics"]),
            (f"lead-{lead} words (first {lead} words of the prompt)", f"lead{lead}w_", ft_res["metrics"])]
    words = ft_res["details"]["mean_words"]
    print(f"\n{ft_res['details']['examples']} test articles (enwiki_2015_02), reference lead sentences of "
          f"{words['reference']:.1f} words on average\n")
    print("| system | ROUGE-1 | ROUGE-2 | ROUGE-L |\n|---|---|---|---|")
    for label, prefix, m in rows:
        print(f"| {label} | " + " | ".join(f"{100 * m[prefix + k]:.1f}" for k in ("rouge1", "rouge2", "rougeL"))
              + " |")
    train = json.loads((ft / "results" / "train.json").read_text())
    pre_train = json.loads((pre / "results" / "train.json").read_text())
    print(f"\npretrained: {pre_train['params']:,} parameters, {pre_train['steps']} steps, {pre_train['tokens']:,} "
          f"tokens, val loss {pre_train['val_loss']:.3f}; fine-tuned: {train['steps']} steps, held-out response "
          f"loss {train['val_loss']:.3f}; mean words written: fine-tuned {words['model']:.1f}, pretrained "
          f"{results['pretrained']['details']['mean_words']['model']:.1f}")
    print("step seconds (this invocation): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    for sample in ft_res["details"]["samples"][:3]:
        print(f"\nreference: {sample['reference']}\nmodel:     {sample['model']}")


if __name__ == "__main__":
    main()
