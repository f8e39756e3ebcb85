"""Every shell command in README.md's code blocks is either run here as written or skipped for a stated reason.

A command is a `$ `-prompted line of a block, or, in a block without prompts, a line that starts with a program
(`cramlm`, `make`, `pip`, `python`, `printf`, `torchrun`); a trailing `\\` joins the next line, a `# comment` is
dropped. A new README command is in neither RUN nor SKIP and fails `test_every_readme_command_is_classified`.

How a command runs (`_as_run`): only paths change, nothing else.
- The README's inputs (`DATA_DIR`, `RUN_DIR`, `../shared/data/...`, `/tmp/...` runs) become files made by the
  `made` fixture: a small corpus, its dataset dir, a 3-layer encoder and a 2-layer decoder trained for 2 steps.
- Other `/tmp/...` paths (outputs) lose their `/tmp/` and land in the test's working directory, like the README's
  relative outputs (`runs/wt2`, `hf_tiny`, `report.html`).
- Optional parts in `[brackets]` (usage notation) are left out.
A command with `|` or `>` runs in bash with the venv's `cramlm` first on PATH, the others in-process. It must exit
0, or, when the README prints `error: ...` under it, exit 2 with that same line.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
PROGRAMS = ("cramlm", "make", "pip", "python", "printf", "torchrun")

MINUTES = "runs for minutes"
GLUE = "needs the GLUE data in ../shared and minutes of fine-tuning"
SKIP = {
    "make demo": "installs, then a 4-minute demo (what `make demo` is for)",
    "make test": "the whole test suite",
    "cramlm train DATA_DIR --budget 10m --out run": "a 10-minute budget",
    "cramlm train --resume run --budget 15m": "a 15-minute budget",
    "cramlm train DATA_DIR --model tiny --recipe demo --budget 6steps --nproc 2 --out run2 train.strategy=fsdp":
        "two torchrun processes, ~30 s: tests/test_distributed_cli.py runs this launch",
    "cramlm sweep DATA_DIR --budget 300000tokens --widths 64,128,256,512 --lr 6.25e-4..2e-2 --trials 6 --depth 2 "
    "--parametrization both --out sweep train.batch_size=16": "24 trials of 300k tokens: about 40 minutes",
    "cramlm sweep DATA_DIR --budget 2e6tokens --widths 64,128 --write-config wide.yaml --target-width 512": MINUTES,
    "cramlm sweep --coord-check --out coord": "widths up to 1024: about 80 s on 2 cores (tests/test_mup_muon.py "
                                              "runs the check on small widths)",
    "cramlm eval glue RUN_DIR --glue-dir ../shared/data/glue --tasks rte,mrpc,sst2,cola,stsb "
    "--max-train-examples 2000": GLUE,
    "cramlm eval glue /tmp/p40/run_glue --glue-dir ../shared/data/glue --tasks cola,sst2,mrpc,stsb,rte "
    "--max-train-examples 2000": GLUE,
    "cramlm export run/finetuned/sst2 --to hf_sst2": "needs a classifier kept by `eval glue` (" + GLUE + ")",
    "python -c \"from transformers import pipeline; print(pipeline('text-classification', model='hf_sst2')(['a "
    "gorgeous, witty, seductive movie.', 'the plot is a mess and the acting is worse.']))\"":
        "needs the hf_sst2 export above",
    "cramlm finetune RUN --data pairs.jsonl [--budget 5m] [--out DIR] [--prompt-field prompt] "
    "[--response-field response]": "the default budget is 5 minutes",
    "cramlm finetune --resume DIR --budget 10m": "a 10-minute budget",
    "cramlm finetune /tmp/wiki/w/pretrained --data /tmp/wiki/w/lead-train.jsonl --budget 4m --out "
    "/tmp/wiki/w/finetuned train.batch_size=16 train.lr=1e-3": "a 4-minute budget",
    "pip install 'cramlm[rouge]'": "needs the network (the test environment has the extra installed)",
    "cramlm eval glue /tmp/c40/run_2l --glue-dir ../shared/data/glue --tasks sst2 --epochs 1 --lr 1e-4 "
    "--batch-size 32": GLUE,
    "cramlm cascade fit /tmp/p40/run_sst2/finetuned/sst2 --task ../shared/data/glue/SST-2 --out /tmp/c40/cascade "
    "--small /tmp/c40/run_2l/finetuned/sst2": GLUE,
    "printf 'a gorgeous, witty, seductive movie.\\nthe plot is nothing but boilerplate clichés from start to "
    "finish.\\n' | cramlm cascade predict /tmp/c40/cascade": "needs the cascade fitted above (GLUE data)",
    "cramlm cascade report /tmp/c40/cascade --out /tmp/c40/curve.png": "needs the cascade fitted above (GLUE data)",
}
RUN = [
    "cramlm train data model.n_layers=abc",
    "cramlm train data nosuch.key=1",
    "cramlm plan --hardware rtx2080ti --hours 24",
    "cramlm plan --hardware h100 --hours 24",
    "cramlm plan --hardware h100 --hours 24 --model bert-crammed | sed -n 6,9p",
    "cramlm prepare ../shared/data/wikitext-2-raw/test.txt --out runs/wt2 --vocab-size 8192",
    "cramlm prepare --stats runs/wt2",
    "cramlm eval ppl RUN_DIR --text ../shared/data/wikitext-2-raw/test.txt [--stride 64] [--unigram DATA_DIR]",
    "cramlm eval lambada RUN_DIR --data ../shared/data/lambada/test.jsonl [--unigram DATA_DIR]",
    "cramlm eval mlm RUN_DIR --data DATA_DIR",
    'cramlm eval fill-mask RUN_DIR "the function returns a [MASK] of the values."',
    "cramlm eval lambada /tmp/ev/gpt --data ../shared/data/lambada/test.jsonl --unigram /tmp/p40/data_bpe",
    "cramlm export run --to hf_tiny",
    'cramlm generate RUN "The history of the city" "In 1990 , the band" [-n 64] [-t 0.8 --top-p 0.95 --seed 1]',
    "cramlm generate RUN --file prompts.jsonl --field text --json --batch-size 16 > completions.jsonl",
    'cramlm generate /tmp/gen/gpt-wiki "The history of the city" "In 1990 , the band" -n 24 '
    "--repetition-penalty 1.3",
    "cramlm eval rouge RUN --data pairs.jsonl [--max-new-tokens 64] [--limit N] [--lead-words N]",
    "cramlm eval rouge /tmp/wiki/w/finetuned --data /tmp/wiki/w/lead-test.jsonl --limit 200 --max-new-tokens 48",
    "cramlm report run-20s run-40s run-80s --out report.html",
    "cramlm cascade shrink /tmp/p40/run_sst2 --layers 2 --out /tmp/c40/run_2l",
]


def readme_commands(text: str) -> list[tuple[str, str | None]]:
    """(command, the `error: ...` line the README prints under it, if any), in README order."""
    found = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.S | re.M):
        lines = block.splitlines()
        prompted = any(line.startswith("$ ") for line in lines)
        i = 0
        while i < len(lines):
            line, i = lines[i], i + 1
            if prompted:
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            elif line.split(" ", 1)[0] not in PROGRAMS:
                continue
            while line.rstrip().endswith("\\") and i < len(lines):
                line, i = line.rstrip()[:-1] + " " + lines[i].strip(), i + 1
            error = lines[i] if i < len(lines) and lines[i].startswith("error: ") else None
            found.append((" ".join(re.sub(r"\s+#\s.*$", "", line).split()), error))
    return found


COMMANDS = readme_commands(README.read_text())
ERRORS = dict(COMMANDS)

WORDS = ("the city band history function returns a list of the values in 1990 and was new york first time "
         "world late war river town music people they it").split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The inputs the README's commands name, made small: {README path: path here}."""
    from cramlm.cli import main

    root = tmp_path_factory.mktemp("readme-inputs")
    rng = random.Random(0)
    (root / "corpus.txt").write_text("\n\n".join(_text(rng, rng.randint(20, 60)) + "." for _ in range(300)))
    (root / "test.txt").write_text(_text(rng, 60) + ".\n")
    (root / "lambada.jsonl").write_text("".join(json.dumps({"text": _text(rng, 20)}) + "\n" for _ in range(3)))
    (root / "pairs.jsonl").write_text("".join(json.dumps({"prompt": _text(rng, 12), "response": _text(rng, 4)})
                                              + "\n" for _ in range(3)))
    (root / "prompts.jsonl").write_text("".join(json.dumps({"text": _text(rng, 4)}) + "\n" for _ in range(2)))

    def cli(*args: str) -> None:
        with pytest.raises(SystemExit) as exit_:
            main([str(a) for a in args])
        assert exit_.value.code in (0, None), args

    small = ["model.d_model=32", "model.n_heads=2", "model.d_ff=64", "train.batch_size=4",
             "train.micro_batch_size=4", "train.val_batches=1"]
    cli("prepare", root / "corpus.txt", "--out", root / "data", "--vocab-size", "256", "--val-fraction", "0.1")
    cli("train", root / "data", "--model", "tiny", "--budget", "2steps", "--out", root / "enc",
        "model.n_layers=3", *small)
    cli("train", root / "data", "--model", "gpt-small", "--budget", "2steps", "--out", root / "dec",
        "model.n_layers=2", *small)
    data, enc, dec = (str(root / n) for n in ("data", "enc", "dec"))
    return {
        "data": data, "DATA_DIR": data, "/tmp/p40/data_bpe": data,
        "RUN_DIR": enc, "run": enc, "/tmp/p40/run_sst2": enc, "run-20s": enc, "run-80s": enc,
        "RUN": dec, "/tmp/ev/gpt": dec, "/tmp/gen/gpt-wiki": dec, "/tmp/wiki/w/finetuned": dec, "run-40s": dec,
        "../shared/data/wikitext-2-raw/test.txt": str(root / "corpus.txt"),
        "../shared/data/lambada/test.jsonl": str(root / "lambada.jsonl"),
        "pairs.jsonl": str(root / "pairs.jsonl"), "/tmp/wiki/w/lead-test.jsonl": str(root / "pairs.jsonl"),
        "prompts.jsonl": str(root / "prompts.jsonl"),
    }


def _as_run(command: str, made: dict[str, str]) -> str:
    """The command with the README's paths replaced (see the module docstring) and optional [parts] left out."""
    command = re.sub(r" \[-[^\]]*\]", "", command)
    words = []
    for word in shlex.split(command):
        if word in made:
            word = made[word]
        elif word.startswith("/tmp/"):
            word = word.removeprefix("/tmp/")
        words.append(shlex.quote(word) if word not in ("|", ">") else word)
    return " ".join(words)


def test_every_readme_command_is_classified():
    commands = [c for c, _ in COMMANDS]
    unknown = [c for c in commands if c not in SKIP and c not in RUN]
    assert not unknown, f"README commands neither run nor skipped here (add each to RUN or SKIP): {unknown}"
    stale = [c for c in [*SKIP, *RUN] if c not in commands]
    assert not stale, f"no longer in the README: {stale}"


def test_readme_commands_run_as_written(made, tmp_path, monkeypatch, cli):
    """In README order, in one working directory, so that later commands find what earlier ones wrote."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    failures = []
    for command in RUN:
        line = _as_run(command, made)
        if "|" in line or ">" in line:
            env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
            done = subprocess.run(["bash", "-o", "pipefail", "-c", line], capture_output=True, text=True, env=env)
            code, err = done.returncode, done.stderr
        else:
            code, _, err = cli(*shlex.split(line)[1:])
        error = ERRORS[command]
        if (code, error is None or error in err.splitlines()) != (2 if error else 0, True):
            failures.append(f"{command}\n  ran: {line}\n  exit {code}: {err.strip()[-500:]}")
    assert not failures, "\n".join(failures)
