"""benchmarks/gpu_check.py end to end on the CPU with tiny shapes (the same code a lent GPU runs), and its
tolerance of a missing optional extra."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
WORDS = "the cat sat on a mat while dogs ran in parks and birds sang songs of rivers trees stones".split()
SECTIONS = ["env", "encoder", "decoder", "sdpa", "memory", "numerics", "crammed_run"]


def corpus(path: Path) -> Path:
    rng = random.Random(0)
    path.write_text("\n\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 80)))
                                for _ in range(300)))
    return path


def glue_dir(root: Path) -> Path:
    """SST-2 and RTE in the download_glue_data.py layout, learnable from a cue word."""
    rng = random.Random(1)
    for split, n in (("train", 80), ("dev", 24)):
        (root / "SST-2").mkdir(parents=True, exist_ok=True)
        (root / "RTE").mkdir(parents=True, exist_ok=True)
        sst = [(" ".join(rng.choices(WORDS, k=6)) + (" good" if y else " bad"), y)
               for y in (rng.randint(0, 1) for _ in range(n))]
        (root / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in sst))
        rte = [(i, " ".join(rng.choices(WORDS, k=8)), " ".join(rng.choices(WORDS, k=4)),
                rng.choice(["entailment", "not_entailment"])) for i in range(n)]
        (root / "RTE" / f"{split}.tsv").write_text("index\tsentence1\tsentence2\tlabel\n"
                                                   + "".join("\t".join(map(str, r)) + "\n" for r in rte))
    return root


def test_tiny_cpu_check_writes_every_section(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out),
                           "--data", str(corpus(tmp_path / "c.txt")), "--glue-dir", str(glue_dir(tmp_path / "g"))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["device"] == "cpu" and report["tiny"] is True
    sections = report["sections"]
    assert list(sections) == SECTIONS
    bad = {k: v.get("error") or v.get("reason") for k, v in sections.items() if v["status"] != "ok"}
    assert not bad
    assert report["seconds"] < 180  # under 2 minutes on 2 idle cores; slack for a loaded machine
    for name in ("encoder", "decoder"):
        rows = sections[name]["rows"]
        assert [r["mode"] for r in rows] == ["eager", "compiled (eager)", "eager"]
        assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 2 and r["steps"] >= 2 for r in rows), rows
        assert sections[name]["summary"]["compiled_vs_transformers"] > 0
    sdpa = {r["case"]: r for r in sections["sdpa"]["rows"]}
    assert sdpa["encoder packed (no mask)"]["math"].startswith("ok")
    assert sdpa["encoder packed (no mask)"]["default"] in ("flash", "memory-efficient", "cudnn", "math")
    assert sdpa["bert-crammed forward+backward, packed"]["default"] != "none"
    memory = {r["strategy"]: r for r in sections["memory"]["rows"]}
    assert set(memory) == {"plain", "ddp (1 process)", "fsdp (1 process)"}
    for r in memory.values():  # fp32 weights, gradients, Adam moments: what the planner counts (DDP's buckets aside)
        assert r["peak_gb"] is None and r["state_gb"] == pytest.approx(16 * r["params"] / 1e9, rel=0.01)
    numerics = {r["model"]: r for r in sections["numerics"]["rows"]}
    assert set(numerics) == {"bert-crammed", "gpt-small"}
    assert all(r["within_tolerance"] and r["compile_same_loss"] for r in numerics.values()), numerics
    steps = {r["step"]: r for r in sections["crammed_run"]["rows"]}
    assert list(steps) == ["prepare", "train", "eval_mlm", "eval_glue"] and all(r["rc"] == 0 for r in steps.values())
    assert steps["train"]["steps"] > 0 and math.isfinite(steps["eval_mlm"]["heldout_mlm_loss"])
    assert {"sst2", "rte"} <= set(steps["eval_glue"]["metrics"])
    md = (out / "gpu_check.md").read_text()
    assert all(f"## {name}: ok" in md for name in SECTIONS)


def test_a_missing_extra_skips_its_rows_with_the_reason(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # dataclasses look their module up there
    spec.loader.exec_module(gpu_check)
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    check = gpu_check.Check(torch.device("cpu"), True, tmp_path, None, None, dtype=None, peak=1e11, hw_name="cpu",
                            backend="eager")
    section = gpu_check.run_section(check, "decoder")
    assert section["status"] == "ok"
    rows = section["rows"]
    assert rows[0]["tokens_per_s"] > 0 and "transformers is not installed" in rows[2]["skipped"]
    crammed = gpu_check.run_section(check, "crammed_run")
    assert crammed["status"] == "skipped" and "--data" in crammed["reason"]
