import base64
import json
import math
import os
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from matplotlib.backends.backend_agg import FigureCanvasAgg

from cramlm.config import RunConfig
from cramlm.report import plots
from cramlm.report.fits import scaling_fits
from cramlm.report.html import report
from cramlm.report.plots import load_run, load_sweep, time_unit
from cramlm.train import sweep as sw

A, B, E = 40.0, 0.06, 1.5  # the law the synthetic runs follow: final loss = A * C^-B + E


def law(c):
    return A * c**-B + E


def causal_law(c):  # a decoder's loss on another tokenizer: another law
    return 60.0 * c**-0.08 + 2.0


def md_table(text):
    """{run name: {column: cell}} from the markdown report."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header, *rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return {row[0]: dict(zip(header, row)) for row in rows}


def make_run(path, total_flops, steps=20, glue=None, arch="encoder", tokenizer=b'{"model": "wordpiece A"}',
             data_dir="/data/books", status="completed", seconds=3600.0, val=True, loss=law, co2_kg=0.1,
             interrupted=False):
    """A run dir as `cramlm train` writes it, with a loss curve that ends on `loss(FLOPs)`.

    status "completed" or another writes results/train.json with it; None writes no results (a run that died).
    """
    path.mkdir(parents=True)
    cfg = RunConfig()
    cfg.budget.limit = f"{total_flops:g}flops"
    cfg.model.arch = arch
    cfg.save(path / "config.yaml")
    (path / "tokenizer.json").write_bytes(tokenizer)
    records = [{"event": "start", "step": 0, "device": "cpu", "hardware": "cpu"}]
    for i in range(1, steps + 1):
        p = i / steps
        flops = p * total_flops
        records.append({"step": 10 * i, "progress": p, "tokens": p * total_flops / 6e8, "flops": flops,
                        "seconds": seconds * p, "loss": loss(flops) + 0.05, "lr": 1e-3 * min(1, 2 * p),
                        "batch_size": 128 * (1 + 3 * p), "tokens_per_s": 1e4, "mfu": 0.3, "usd": 0.2 * p,
                        "co2_kg": co2_kg * p})
        if val and i % 10 == 0:
            records.append({"event": "val", "step": 10 * i, "val_loss": loss(flops), "progress": p,
                            "seconds": seconds * p})
    if interrupted:
        records.append({"event": "interrupted", "signal": "SIGTERM", "step": 10 * steps})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 3')  # torn line
    if status is None:
        return path
    (path / "results").mkdir()
    train = {"status": status, "budget": cfg.budget.limit, "steps": 10 * steps, "tokens": total_flops / 6e8,
             "flops": total_flops, "seconds": seconds, "train_loss": loss(total_flops) + 0.05,
             "val_loss": loss(total_flops) if val else None, "params": 1.2e8, "hardware": "cpu",
             "data_dir": data_dir}
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
    (fit,), left_out = scaling_fits([load_run(p) for p in runs])
    assert left_out == [] and [r.name for r in fit.runs] == ["run0", "run1", "run2", "run3"]
    assert fit.law.b == pytest.approx(B, rel=0.02)
    assert fit.law.e == pytest.approx(E, abs=0.01)
    assert fit.law(1e19) == pytest.approx(law(1e19), rel=1e-3)


def test_fewer_than_three_runs_skip_the_fit(runs):
    text = report(runs[:2])
    assert text.count("<img") == 4 and "no fit (2 compute budgets" in text and "needs 3 or more runs" in text
    assert "extrapolated" not in text


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


def test_incomparable_runs_get_no_fit_and_no_extrapolation(tmp_path):
    """The issue's case: an encoder run, a decoder run on another tokenizer and a failed run: no law through them."""
    enc = make_run(tmp_path / "enc", 1e15, seconds=300)
    dec = make_run(tmp_path / "dec", 3e15, arch="decoder", tokenizer=b'{"model": "bpe B"}', seconds=240,
                   loss=causal_law)
    failed = make_run(tmp_path / "failed", 1e13, steps=1, status=None, seconds=5)
    text = report([enc, dec, failed], "md")
    assert "extrapolated" not in text and "L(C) =" not in text
    assert text.count(": no fit (1 compute budget among comparable completed runs") == 2
    assert "mlm, tokenizer " in text and "causal, tokenizer " in text and "data /data/books" in text
    assert "Not in any fit: failed (unfinished)." in text
    assert "<img" not in text and report([enc, dec, failed]).count("<img") == 4  # no scaling plot either


def test_each_group_of_comparable_runs_is_fitted_separately(tmp_path):
    mlm = [make_run(tmp_path / f"mlm{i}", c) for i, c in enumerate([1e15, 1e16, 1e17])]
    clm = [make_run(tmp_path / f"clm{i}", c, arch="decoder", tokenizer=b"bpe", loss=causal_law)
           for i, c in enumerate([2e15, 2e16, 2e17])]
    web = make_run(tmp_path / "web", 5e16, data_dir="/data/web")  # same model and tokenizer, other data
    tok = make_run(tmp_path / "tok", 5e15, tokenizer=b"unigram")  # same data, other tokenizer
    paths = [mlm[0], clm[0], web, mlm[1], clm[1], tok, mlm[2], clm[2]]
    fits, left_out = scaling_fits([load_run(p) for p in paths])
    by_runs = {tuple(r.name for r in f.runs): f for f in fits}
    assert left_out == [] and set(by_runs) == {("mlm0", "mlm1", "mlm2"), ("clm0", "clm1", "clm2"), ("web",), ("tok",)}
    assert by_runs["mlm0", "mlm1", "mlm2"].law.b == pytest.approx(B, rel=0.05)
    assert by_runs["clm0", "clm1", "clm2"].law.b == pytest.approx(0.08, rel=0.05)
    assert by_runs["clm0", "clm1", "clm2"].group.objective == "causal"
    assert by_runs["web", ].law is None and by_runs["tok", ].law is None
    text = report(paths, "md")
    assert "over mlm0, mlm1, mlm2;" in text and "over clm0, clm1, clm2;" in text
    assert text.count("extrapolated to") == 2 and text.count("no fit (") == 2


def test_a_fit_that_explains_little_is_refused(tmp_path):
    paths = [make_run(tmp_path / f"run{i}", c, loss=lambda _, v=v: v)
             for i, (c, v) in enumerate([(1e15, 3.0), (1e16, 4.0), (1e17, 2.9), (1e18, 3.9)])]
    (fit,), _ = scaling_fits([load_run(p) for p in paths])
    assert fit.law is None and fit.reason.startswith("R² = 0.12 < 0.9")
    text = report(paths)
    assert "no fit (R² = 0.12 &lt; 0.9" in text and "extrapolated" not in text and text.count("<img") == 4


def test_train_loss_standing_in_for_val_loss_is_marked(tmp_path):
    with_val = make_run(tmp_path / "val", 1e15)
    no_val = make_run(tmp_path / "noval", 1e16, val=False)
    text = report([with_val, no_val], "md")
    table = md_table(text)
    assert table["noval"]["val loss"] == f"{law(1e16) + 0.05:.4g}†"
    assert table["val"]["val loss"] == f"{law(1e15):.4g}"
    assert "† train loss: no validation loss recorded." in text
    assert "<p>† train loss: no validation loss recorded.</p>" in report([with_val, no_val])
    assert "†" not in report([with_val], "md")


def test_failed_and_interrupted_runs_are_marked_and_left_out_of_the_fit(tmp_path):
    good = [make_run(tmp_path / f"run{i}", c) for i, c in enumerate([1e15, 1e16, 1e17])]
    failed = make_run(tmp_path / "failed", 1e18, status="failed", loss=lambda _: 9.0)
    died = make_run(tmp_path / "died", 3e17, status=None)
    stopped = make_run(tmp_path / "stopped", 2e17, status=None, interrupted=True)
    paths = [*good, failed, died, stopped]
    text = report(paths, "md")
    assert {name: row["status"] for name, row in md_table(text).items()} == {
        "run0": "completed", "run1": "completed", "run2": "completed", "failed": "failed", "died": "unfinished",
        "stopped": "interrupted"}
    (fit,), left_out = scaling_fits([load_run(p) for p in paths])
    assert [r.name for r in fit.runs] == ["run0", "run1", "run2"]
    assert fit.law.b == pytest.approx(B, rel=0.05) and fit.law.e == pytest.approx(E, abs=0.05)
    assert "Not in any fit: failed (failed), died (unfinished), stopped (interrupted)." in text


def test_the_fit_is_printed_once(runs):
    text = report(runs)
    assert text.count("L(C) = a·C^(-b) + e") == 1 and text.count("extrapolated to 1e+19 FLOPs") == 1
    assert report(runs, "md").count("L(C) = a·C^(-b) + e") == 1


@pytest.mark.parametrize("co2_kg, unit, top", [(4e-5, "mg", 40.0), (0.1, "g", 100.0), (5.0, "kg", 5.0)])
def test_co2_axis_has_readable_units_and_its_label_clear_of_the_ticks(tmp_path, co2_kg, unit, top):
    run = load_run(make_run(tmp_path / "run", 1e14, co2_kg=co2_kg))
    fig = plots.cost_figure([run])
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    usd, co2 = fig.axes
    assert co2.get_ylabel() == f"{unit} CO2e" and max(co2.lines[0].get_ydata()) == pytest.approx(top)
    assert co2.yaxis.get_offset_text().get_text() == ""  # no factor like 1e-5 printed above the axis
    label = co2.yaxis.label.get_window_extent(renderer)
    ticks = [t.get_window_extent(renderer) for t in co2.get_yticklabels() if t.get_text()]
    assert ticks and label.x1 <= min(t.x0 for t in ticks)  # left of every tick label, touching none
    assert not label.overlaps(usd.get_tightbbox(renderer))  # nor reaching into the panel beside it


@pytest.mark.parametrize("seconds, unit", [(30, "s"), (119, "s"), (600, "min"), (7199, "min"), (3 * 3600, "h")])
def test_time_unit_follows_the_data(seconds, unit):
    assert time_unit(seconds)[1] == unit


def test_a_30_second_run_is_plotted_in_seconds(tmp_path):
    run = load_run(make_run(tmp_path / "short", 1e14, seconds=30))
    ax = plots.loss_figure([run]).axes[0]
    assert ax.get_xlabel() == "wall-clock (s)" and max(ax.lines[0].get_xdata()) == pytest.approx(30.0)


def make_sweep(path, kinds=("standard", "mup"), widths=(64, 128), lrs=(1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)):
    """A sweep dir as `cramlm sweep` writes it: the best LR halves with width under standard and stays at 4e-3
    under muP."""
    sweep = sw.plan(path, "1m", "encoder", 2, list(widths), list(lrs), list(kinds))
    for trial in sweep.trials:
        best = 4e-3 if trial.parametrization == "mup" else 4e-3 * 64 / trial.width
        trial.status = "completed"
        trial.loss = 3.0 + 0.1 * math.log2(trial.lr / best) ** 2 - 0.1 * math.log2(trial.width / 64)
    sweep.trials[-1].status, sweep.trials[-1].loss = "pending", None  # not finished yet
    sweep.trials[-2].loss = float("nan")  # diverged
    for trial in sweep.trials[:3]:  # the others' run dirs are elsewhere or not written yet
        make_run(path / trial.run, 1e14)
    sw.save(path, sweep)
    return path


def test_a_sweep_dir_plots_loss_against_lr_per_width(cli, tmp_path, runs):
    sweep_dir = make_sweep(tmp_path / "sweep")
    standard, mup = plots.sweep_figure(load_sweep(sweep_dir)).axes
    assert standard.get_xscale() == mup.get_xscale() == "log"
    assert standard.get_title() == "standard parametrization" and mup.get_title() == "muP"
    assert [line.get_label() for line in standard.lines] == ["width 64", "width 128"]
    assert list(standard.lines[0].get_xdata()) == [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2]
    assert standard.lines[0].get_ydata()[2] == pytest.approx(3.0)
    assert len(mup.lines[1].get_xdata()) == 3  # the unfinished and the diverged trials are not drawn
    out = tmp_path / "sweep.html"
    code, stdout, err = cli("report", sweep_dir, "--out", out)
    assert code == 0, err
    assert "(3 runs, 1 sweep," in stdout
    text = out.read_text()
    assert '<img alt="Sweep sweep"' in text and "Scaling law" not in text  # trials vary the LR, not the compute
    assert ("Best LR: standard: width 64 at 0.004, width 128 at 0.002; mup: width 64 at 0.004, width 128 at 0.004."
            in text)
    assert set(md_table(report([sweep_dir], "md"))) == {"sweep/standard-w64-lr0.001", "sweep/standard-w64-lr0.002",
                                                        "sweep/standard-w64-lr0.004"}
    mixed = report([sweep_dir, *runs], "md")  # beside plain runs: they are fitted, the trials are not
    assert "over run0, run1, run2, run3;" in mixed and "Not in any fit" not in mixed


def test_a_sweep_of_one_parametrization_has_one_panel(tmp_path):
    sweep = load_sweep(make_sweep(tmp_path / "sweep", kinds=("mup",), widths=(64, 128, 256)))
    (ax,) = plots.sweep_figure(sweep).axes
    assert ax.get_title() == "muP" and len(ax.lines) == 3


def test_a_bad_sweep_json_is_a_one_line_error(cli, tmp_path):
    path = tmp_path / "sweep"
    path.mkdir()
    (path / "sweep.json").write_text(json.dumps({"trials": [{"run": "a", "width": 64}]}))
    code, _, err = cli("report", path)
    assert code == 2 and "is not a sweep file cramlm wrote" in err and len(err.strip().splitlines()) == 1


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
