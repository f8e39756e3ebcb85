"""`cramlm generate` end to end on a tiny decoder run dir: greedy equals transformers' generate on the export,
sampling is reproducible by seed, stop strings, prompt sources, refusals."""

import io
import json
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from cramlm.cli.generate import Streamer
from cramlm.config import resolve_config
from cramlm.data.tokenizer import PAD_ID, SEP_ID, save_tokenizer, train_tokenizer
from cramlm.generation import completion_text, encode_prompt
from cramlm.models import build_model
from cramlm.train.checkpoint import save_final

TEXTS = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs",
         "how vexingly quick daft zebras jump", "the five boxing wizards jump quickly"]
PROMPTS = ["the quick brown", "pack my box with five", "zebras", "the lazy dog jumps over the quick"]


def make_run(root, preset="gpt-small"):
    tok = train_tokenizer(TEXTS * 20, vocab_size=120)
    kw = {"n_layers": 2, "d_model": 32, "n_heads": 4, "d_ff": 64, "vocab_size": tok.get_vocab_size(),
          "max_seq_len": 48}
    cfg = resolve_config(model=preset, overrides=[f"model.{k}={v}" for k, v in kw.items()])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():  # spread the logits: greedy choices far from ties, so float noise cannot flip them
        model.embed.tok.weight.mul_(10)
    save_final(root, model.state_dict(), cfg)
    save_tokenizer(tok, root / "tokenizer.json")
    return root, tok


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("gen") / "run")


def generate_json(cli, *args):
    code, out, err = cli("generate", *args, "--json")
    assert code == 0, err
    assert "new tokens in" in err  # the timing line goes to stderr, stdout holds the results alone
    return [json.loads(line) for line in out.splitlines()]


def test_greedy_equals_transformers_generate_on_the_export(run, cli, tmp_path):
    run_dir, tok = run
    code, _, err = cli("export", run_dir, "--to", tmp_path / "hf")
    assert code == 0, err
    ours = generate_json(cli, run_dir, *PROMPTS, "--max-new-tokens", "20", "--batch-size", "3")
    assert [r["prompt"] for r in ours] == PROMPTS
    from_export = generate_json(cli, tmp_path / "hf", *PROMPTS, "--max-new-tokens", "20")
    assert [r["completion"] for r in from_export] == [r["completion"] for r in ours]

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = [encode_prompt(tok, p) for p in PROMPTS]
    width = max(map(len, ids))
    batch = torch.tensor([[PAD_ID] * (width - len(p)) + p for p in ids])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in ids])[:, None]).long()
    with torch.no_grad():
        out = hf.generate(input_ids=batch, attention_mask=mask, max_new_tokens=20, do_sample=False,
                          pad_token_id=PAD_ID, eos_token_id=SEP_ID)
    for r, p, row in zip(ours, ids, out[:, width:].tolist()):
        new = row[:row.index(SEP_ID)] if SEP_ID in row else row
        assert r["tokens"] == len(new)
        assert r["completion"] == completion_text(tok, p, new)
    assert sum(r["tokens"] for r in ours) > 30  # real completions, not empty ones


def test_sampling_reproducible_by_seed_and_top_k_1_is_greedy(run, cli):
    run_dir, _ = run

    def completions(*args):
        return [r["completion"] for r in generate_json(cli, run_dir, *PROMPTS, "-n", "16", *args)]

    greedy = completions()
    sampled = completions("--temperature", "1.2", "--seed", "7")
    assert completions("--temperature", "1.2", "--seed", "7", "--batch-size", "1") == sampled
    assert completions("--temperature", "1.2", "--seed", "8") != sampled
    assert sampled != greedy
    assert completions("--temperature", "1.2", "--seed", "9", "--top-k", "1") == greedy


def test_stop_strings_cut_the_completion(run, cli):
    run_dir, _ = run
    full = generate_json(cli, run_dir, PROMPTS[0], "-n", "24")[0]
    words = full["completion"].split()
    assert len(words) >= 4
    stop = words[2]
    first = full["completion"].index(stop)
    stopped = generate_json(cli, run_dir, PROMPTS[0], "-n", "24", "--stop", stop, "--stop", "never-in-text")[0]
    assert stopped["completion"] == full["completion"][:first]
    assert stopped["tokens"] < full["tokens"]  # generation ended there, not only the text


def test_prompts_from_stdin_and_files(run, cli, tmp_path, monkeypatch):
    run_dir, _ = run
    direct = generate_json(cli, run_dir, *PROMPTS, "-n", "6")
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(PROMPTS[1:]) + "\n\n"))  # blank lines skipped
    mixed = generate_json(cli, run_dir, PROMPTS[0], "-", "-n", "6")
    assert [r["completion"] for r in mixed] == [r["completion"] for r in direct]
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n")
    lines = generate_json(cli, run_dir, "--file", tmp_path / "p.txt", "-n", "6")
    assert [r["completion"] for r in lines] == [r["completion"] for r in direct]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"id": i, "text": p}) for i, p in enumerate(PROMPTS)))
    records = generate_json(cli, run_dir, "--file", tmp_path / "p.jsonl", "--field", "text", "-n", "6")
    assert [r["completion"] for r in records] == [r["completion"] for r in direct]

    code, _, err = cli("generate", run_dir, "--file", tmp_path / "p.jsonl", "-n", "6")
    assert code == 2 and "'prompt' field" in err and "p.jsonl:1" in err


def test_plain_output_shows_prompt_and_completion(run, cli):
    run_dir, _ = run
    completions = [r["completion"] for r in generate_json(cli, run_dir, *PROMPTS[:2], "-n", "8")]
    code, out, err = cli("generate", run_dir, *PROMPTS[:2], "-n", "8")
    assert code == 0, err
    assert out == f"{PROMPTS[0]}{completions[0]}\n\n{PROMPTS[1]}{completions[1]}\n"


def test_streamer_holds_back_a_partial_stop_string(run, capsys):
    _, tok = run
    prompt = encode_prompt(tok, "the")
    new = tok.encode("quick brown fox jumps", add_special_tokens=False).ids
    stream = Streamer(tok, prompt, ("fox",))
    shown = []
    for t in new:
        stream(0, t)
        shown.append(capsys.readouterr().out)
    text = completion_text(tok, prompt, new)
    stream.finish(text)
    assert "".join(shown) + capsys.readouterr().out == text[:text.index("fox")] + "\n"
    assert all("f" not in s for s in shown)  # never printed part of the stop string


def test_encoder_and_empty_prompt_lists_are_refused_in_one_line(run, cli, tmp_path, monkeypatch):
    enc_dir, _ = make_run(tmp_path / "enc", preset="bert-crammed")
    code, out, err = cli("generate", enc_dir, "hello")
    assert code == 2 and "fill-mask" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("generate", run[0])
    assert code == 2 and "no prompts" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty.txt").write_text("\n\n")
    code, _, err = cli("generate", run[0], "--file", tmp_path / "empty.txt")
    assert code == 2 and "no prompts" in err
    code, _, err = cli("generate", run[0], "x", "--top-p", "0")
    assert code == 2 and "top_p" in err
    code, _, err = cli("generate", run[0], "x", "-n", "49")
    assert code == 2 and "max_seq_len=48" in err
    code, _, err = cli("generate", run[0], "the quick brown fox jumps", "-n", "64")  # no note of -15 tokens
    assert code == 2 and err.strip().splitlines() == [err.strip()] and "note" not in err
