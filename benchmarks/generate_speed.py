"""Greedy generation speed: `cramlm generate`'s engine vs transformers' `generate`, on the same exported decoder,
the same prompts (WikiText-2 test lines), batch 1 and batch 16, tokens/s side by side, and the greedy outputs
asserted identical. Each measurement is the best of `--repeats`, ours and theirs interleaved (the CPU is shared).

    .venv/bin/python benchmarks/generate_speed.py [--run RUN_DIR] [--prompts 16] [--max-new-tokens 64]

Without `--run`, a randomly initialised 4x256 Llama-layout decoder (WordPiece 8192 trained on WikiText-2 test) is built:
speed does not depend on what the weights learned.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from cramlm.config import resolve_config
from cramlm.data.tokenizer import PAD_ID, SEP_ID, save_tokenizer, train_tokenizer
from cramlm.generation import SamplingConfig, encode_prompt, generate, load_decoder
from cramlm.models import build_model
from cramlm.train.checkpoint import save_final

WIKITEXT = Path("../shared/data/wikitext-2-raw")


def lines(path: Path, n: int, words: int) -> list[str]:
    """The first `n` WikiText lines with at least `words` words (headings skipped), cut to `words` words."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if len(line.split()) >= words and not line.strip().startswith("="):
            out.append(" ".join(line.split()[:words]))
        if len(out) == n:
            break
    return out


def random_run(root: Path) -> Path:
    tok = train_tokenizer(lines(WIKITEXT / "test.txt", 20000, 8), vocab_size=8192)
    overrides = {"n_layers": 4, "d_model": 256, "n_heads": 4, "d_ff": 1024, "vocab_size": tok.get_vocab_size(),
                 "max_seq_len": 256}
    cfg = resolve_config(model="gpt-small", overrides=[f"model.{k}={v}" for k, v in overrides.items()])
    torch.manual_seed(0)
    save_final(root, build_model(cfg.model).state_dict(), cfg)
    save_tokenizer(tok, root / "tokenizer.json")
    return root


def hf_greedy(hf, prompts: list[list[int]], max_new: int) -> list[list[int]]:
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD_ID] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                          pad_token_id=PAD_ID, eos_token_id=SEP_ID)
    rows = out[:, width:].tolist()
    return [row[:row.index(SEP_ID)] if SEP_ID in row else row for row in rows]


def timed(fn, repeats: int) -> tuple[float, list[list[int]]]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", type=Path, help="A decoder run dir (default: a random 4x256 decoder)")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--prompt-words", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from cramlm.export.hf import export_run

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tmp = Path(tempfile.mkdtemp(prefix="cramlm-genbench-"))
    run = args.run or random_run(tmp / "run")
    export_run(run, tmp / "hf")
    model, tok = load_decoder(tmp / "hf", "cpu")  # both engines read the same exported checkpoint
    hf = AutoModelForCausalLM.from_pretrained(tmp / "hf").eval()
    texts = lines(WIKITEXT / "test.txt", args.prompts, args.prompt_words)
    prompts = [encode_prompt(tok, t) for t in texts]
    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens)

    n_params = sum(p.numel() for p in model.parameters())
    c = model.cfg
    print(f"decoder {c.n_layers}x{c.d_model} ({n_params / 1e6:.1f}M params, vocab {c.vocab_size}), "
          f"{len(prompts)} prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens, greedy, "
          f"{args.max_new_tokens} new tokens at most, {args.threads} thread(s), best of {args.repeats}")
    print(f"{'batch':>5} | {'cramlm tok/s':>12} | {'transformers tok/s':>18} | {'ratio':>5} | outputs")
    for batch in (1, 16):
        chunks = [prompts[i:i + batch] for i in range(0, len(prompts), batch)]
        ours_t = theirs_t = 0.0
        ours_out: list[list[int]] = []
        theirs_out: list[list[int]] = []
        for chunk in chunks:
            t, out = timed(lambda: generate(model, chunk, cfg, eos_id=SEP_ID, pad_id=PAD_ID, batch_size=batch),
                           args.repeats)
            ours_t, ours_out = ours_t + t, ours_out + out
            t, out = timed(lambda: hf_greedy(hf, chunk, args.max_new_tokens), args.repeats)
            theirs_t, theirs_out = theirs_t + t, theirs_out + out
        assert ours_out == theirs_out, f"greedy outputs differ at batch {batch}"
        n = sum(map(len, ours_out))
        print(f"{batch:>5} | {n / ours_t:>12.0f} | {n / theirs_t:>18.0f} | {theirs_t / ours_t:>5.2f} | "
              f"identical ({n} tokens)")
    print(f"sample: {texts[0]!r} ->{tok.decode(ours_out[0])!r}")


if __name__ == "__main__":
    main()
