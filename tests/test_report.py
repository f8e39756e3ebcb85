import base64
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from cramlm.config import RunConfig
from cramlm.report.html import report, scaling_fit
from cramlm.report.plots import load_run

A, B, E = 40.0, 0.06, 1.5  # the law the synthetic runs follow: final loss = A * C^-B + E


def law(c):
    return A * c**-B + E


def make_run(path, total_flops, steps=20, glue=None):
    """A run dir as `cramlm train` writes it, with a loss curve that ends on the law above."""
    path.mkdir(parents=True)
    cfg = RunConfig()
    cfg.budget.limit = f"{total_flops:g}flops"
    cfg.save(path / "config.yaml")
    records = [{"event": "start", "step": 0, "device": "cpu", "hardware": "cpu"}]
    for i in range(1, steps + 1):
        p = i / steps
        flops = p * total_flops
        records.append({"step": 10 * i, "progress": p, "tokens": p * total_flops / 6e8, "flops": flops,
                        "seconds": 3600 * p, "loss": law(flops) + 0.05, "lr": 1e-3 * min(1, 2 * p),
                        "batch_size": 128 * (1 + 3 * p), "tokens_per_s": 1e4, "mfu": 0.3, "usd": 0.2 * p,
                        "co2_kg": 0.1 * p})
        if i % 10 == 0:
            records.append({"event": "val", "step": 10 * i, "val_loss": law(flops), "progress": p,
                            "seconds": 3600 * p})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 3')  # torn line
    (path / "results").mkdir()
    train = {"status": "completed", "budget": cfg.budget.limit, "steps": 10 * steps, "tokens": total_flops / 6e8,
             "flops": total_flops, "seconds": 3600.0, "train_loss": law(total_flops) + 0.05,
             "val_loss": law(total_flops), "params": 1.2e8, "hardware": "cpu"}
    (path / "results" / "train.json").write_text(json.dumps(train))
    (path / "results" / "cost.json").write_text(json.dumps({"gpu_hours": 1.0, "usd": 0.2, "kwh": 0.07,
                                                             "co2_kg": 0.1, "hardware": "cpu", "count": 1}))
    if glue:
        (path / "results" / "glue.json").write_text(json.dumps({"name": "glue", "metrics": glue}))
    return path


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images, self.rows, self.text = [], [], 0, []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))
        if tag == "tr":
            self.rows += 1

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture
def runs(tmp_path):
    return [make_run(tmp_path / f"run{i}", c, glue={"average": 71.5, "cola": 30.2} if i == 0 else None)
            for i, c in enumerate([1e15, 1e16, 1e17, 1e18])]


def test_html_report_is_self_contained_with_every_plot(cli, runs, tmp_path):
    out = tmp_path / "report.html"
    code, stdout, err = cli("report", *runs, "--out", out)
    assert code == 0, err
    assert "wrote" in stdout
    text = out.read_text()
    page = Page()
    page.feed(text)
    assert text.startswith("<!DOCTYPE html>") and page.tags[:2] == ["html", "head"]
    assert "http://" not in text and "https://" not in text  # nothing to fetch
    assert page.rows == 1 + len(runs)  # header + one row per run
    assert len(page.images) == 5  # scaling, loss, schedules, throughput, cost
    for img in page.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix) and img["alt"]
        data = base64.b64decode(img["src"][len(prefix):], validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    body = "".join(page.text)
    assert "average 71.5" in body and "run3" in body
    assert "b = 0.06" in body and "e = 1.5" in body  # the fit recovers the synthetic law


def test_power_law_across_runs_recovers_the_law(runs):
    fit = scaling_fit([load_run(p) for p in runs])
    assert fit.b == pytest.approx(B, rel=0.02) and fit.e == pytest.approx(E, abs=0.01)
    assert fit(1e19) == pytest.approx(law(1e19), rel=1e-3)


def test_fewer_than_three_runs_skip_the_fit(runs):
    text = report(runs[:2])
    assert text.count("<img") == 4 and "needs 3 or more runs" in text


def test_markdown_summary(cli, runs):
    code, out, _ = cli("report", *runs[:3], "--format", "md")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "# cramlm report"
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 3 and "glue" in table[0] and "val loss" in table[0]
    assert "L(C) = a·C^(-b) + e" in out and "extrapolated to 1e+18 FLOPs" in out


def test_a_run_with_only_metrics_is_reported(tmp_path):
    path = make_run(tmp_path / "partial", 1e16)
    shutil.rmtree(path / "results")
    run = load_run(path)
    assert run.final_loss == pytest.approx(law(1e16)) and run.flops == pytest.approx(1e16)
    assert "partial" in report([path], "md")


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "is not a run dir"),
])
def test_bad_run_dirs_are_one_line_errors(cli, tmp_path, setup, message):
    path = tmp_path / "nothing"
    setup(path)
    code, _, err = cli("report", path)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("report", path, "--format", "pdf")
    assert code == 2


@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="headless Chromium is not installed")
def test_chromium_renders_the_report(runs, tmp_path):
    out = tmp_path / "report.html"
    out.write_text(report(runs))
    shot = tmp_path / "shot.png"
    chromium = "/usr/bin/chromium"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,3000", out.as_uri()], check=True, timeout=60, capture_output=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", out.as_uri()],
                         check=True, timeout=60, capture_output=True, text=True).stdout
    assert dom.count("<img") == 5 and "cramlm report" in dom
