"""Run summaries and reports, on small synthetic run directories written through rundir."""

from __future__ import annotations

import base64
import html
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpcrun import report, rundir
from hpcrun.config import load_config

METRICS = ["auroc", "auprc", "accuracy", "f1", "mcc"]  # v3's validation_metrics
HOSTILE = "<script>alert(1)</script>"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TRAINING_PLOTS = {"losses", "metrics", "separation", "gradients", "memory"}

# pretrain selects on val_loss (min), finetune on val_auroc (max) in the shipped v3 config
PRETRAIN = {
    "Train Loss": [1.0, 0.8, 0.6, 0.5],
    "Val Loss": [0.9, 0.7, 0.75, 0.72],     # lowest at epoch 2
    "Val AUROC": [0.5, 0.55, 0.6, 0.95],    # highest at 4: must not be used for pretrain
    "separation": [0.01, 0.02, 0.03, 0.04],
    "Epoch Time": [2.0, 1.0, 1.5, 9.0],
}
FINETUNE = {
    "Train Loss": [0.7, 0.5, 0.4, 0.35, 0.3],
    "Val Loss": [0.6, 0.5, 0.45, 0.4, 0.35],  # lowest at 5: must not be used for finetune
    "Val AUROC": [0.6, 0.8, 0.85, 0.85, 0.83],  # best at 3 (a tie does not improve)
    "separation": [0.1, 0.2, 0.3, 0.25, 0.22],
    "Epoch Time": [1.0, 2.0, 3.0, 4.0, 100.0],
}
EVALUATION = {
    "pretrain": [["val", 0.5, 0.3, 0.6, 0.1, 0.9, 0.2, 0.1, 0.15, math.nan]],
    "finetune": [["val", 0.85, 0.7, 0.8, 0.7, 0.9, 0.75, 0.7, 0.72, 0.6]],
    "eval": [["val", 0.85, 0.7, 0.8, 0.7, 0.9, 0.75, 0.7, 0.72, 0.6],
             ["test", 0.91234, 0.81, 0.87, 0.66, 0.95, 0.8, 0.66, 0.7234567, 0.61]],
}


def write_training_stage(stage: Path, values: dict[str, list[float]], *, ranks: int = 2,
                         gpu: bool = True, components: tuple[str, ...] = ("reconstruction",
                                                                          "classification"),
                         grad_min: float = 0.1) -> None:
    n = len(values["Train Loss"])
    log = rundir.CsvLog(stage / rundir.TRAINING, rundir.training_columns(METRICS))
    for i in range(n):
        row = {c: 0.5 for c in log.columns}
        row.update({"Epoch": i + 1, "Epoch Time": values["Epoch Time"][i],
                    "Train Loss": values["Train Loss"][i], "Val Loss": values["Val Loss"][i],
                    "Val AUROC": values["Val AUROC"][i], "Val MCC": 0.1 * i,
                    "Learning Rate": 1e-3})
        log.write(row)
    log.close()

    log = rundir.CsvLog(stage / rundir.LOSS_COMPONENTS,
                        rundir.loss_component_columns(list(components), learned=False))
    for i in range(n):
        for phase, key in (("train", "Train Loss"), ("val", "Val Loss")):
            total = values[key][i]
            log.write([i + 1, phase, *(total / len(components) for _ in components), total])
    log.close()

    log = rundir.CsvLog(stage / rundir.PROBABILITY_STATS, rundir.PROBABILITY_COLUMNS)
    for i in range(n):
        sep = values["separation"][i]
        log.write([i + 1, "train", 0.5 + sep, 0.1, 0.5, 0.1, sep + 0.05])
        log.write([i + 1, "val", 0.5 + sep, 0.1, 0.5, 0.1, sep])
    log.close()

    rundir.write_csv(stage / rundir.GRADIENT_STATS, rundir.GRADIENT_COLUMNS,
                     [[i + 1, 10, 1.0 / (i + 1), 0.1, grad_min, 2.0, 0.5, 0.0, 0]
                      for i in range(n)])
    memory = []
    for i in range(n):
        for rank in range(ranks):
            memory.append([i + 1, rank, "node1", f"cuda:{rank}" if gpu else "cpu",
                           100.0 if gpu else None, 200.0 if gpu else None,
                           (300.0 + 10 * i + rank) if gpu else None, None, None, None,
                           400.0 + i + 50 * rank])
    rundir.write_csv(stage / rundir.GPU_MEMORY, rundir.MEMORY_COLUMNS, memory)


def v3_yaml(pretrain_classifies: bool = True) -> str:
    """The shipped v3 config; by default its pretraining also trains the classifier (the
    shipped one pretrains on reconstruction alone)."""
    data = yaml.safe_load(load_config("v3").to_yaml())
    if pretrain_classifies:
        components = data["pipeline"][0]["overrides"]["training"]["loss"]["components"]
        components["classification"] = 0.5
    return yaml.safe_dump(data)


def make_run(root: Path, *, experiment: str = "v3", state: str = "SUCCEEDED",
             config: bool = True, pretrain_classifies: bool = True) -> Path:
    run = root / "runs" / "v3" / "20260101-000000-abcd"
    run.mkdir(parents=True)
    if config:
        (run / rundir.CONFIG).write_text(v3_yaml(pretrain_classifies))
    stages = {"pretrain": "SUCCEEDED", "finetune": "SUCCEEDED", "eval": "SUCCEEDED"}
    rundir.write_json(run / rundir.STATUS, {
        "state": state, "run_id": run.name, "experiment": experiment, "stage": "eval",
        "epoch": 0, "epochs": 0, "stages": stages, "message": None, "updated_at": 0.0})
    rundir.write_json(run / rundir.METADATA, {"run_id": run.name, "experiment": experiment,
                                              "pipeline": list(stages)})
    write_training_stage(run / "pretrain", PRETRAIN, gpu=True, grad_min=0.0)
    write_training_stage(run / "finetune", FINETUNE, gpu=False, ranks=1,
                         components=("classification",))
    for name, rows in EVALUATION.items():
        rundir.write_csv(run / name / rundir.EVALUATION, rundir.EVALUATION_COLUMNS, rows)
    rundir.write_csv(run / "eval" / rundir.GPU_MEMORY, rundir.MEMORY_COLUMNS,
                     [[5, 0, "node1", "cpu", None, None, None, None, None, None, 500.0]])
    rundir.write_csv(run / "eval" / rundir.PROBABILITY_STATS, rundir.PROBABILITY_COLUMNS,
                     [[5, "eval_test", 0.8, 0.1, 0.2, 0.1, 0.6]])
    return run


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path)


def evaluation_csv(path: Path) -> list[dict]:
    return [{k: (v if k == "split" else float(v)) for k, v in row.items()}
            for row in rundir.read_rows(path)]


# --------------------------------------------------------------------------- summarize


def test_summary_finds_stages_in_pipeline_order_with_run_identity(run):
    summary = report.summarize(run)
    assert summary.run_id == run.name
    assert summary.experiment == "v3"
    assert summary.state == "SUCCEEDED"
    assert [s.name for s in summary.stages] == ["pretrain", "finetune", "eval"]
    assert [s.state for s in summary.stages] == ["SUCCEEDED"] * 3


def test_best_epoch_follows_each_stages_early_stopping_metric(run):
    summary = report.summarize(run)
    pretrain, finetune = summary.stage("pretrain"), summary.stage("finetune")
    assert (pretrain.metric, pretrain.metric_mode) == ("Val Loss", "min")
    assert (pretrain.best_epoch, pretrain.best_value) == (2, 0.7)
    assert (finetune.metric, finetune.metric_mode) == ("Val AUROC", "max")
    assert (finetune.best_epoch, finetune.best_value) == (3, 0.85)
    assert (pretrain.epochs, finetune.epochs) == (4, 5)


def test_without_a_config_the_best_epoch_is_the_lowest_val_loss(tmp_path):
    summary = report.summarize(make_run(tmp_path, config=False))
    finetune = summary.stage("finetune")
    assert (finetune.metric, finetune.best_epoch, finetune.best_value) == ("Val Loss", 5, 0.35)


def test_loss_decrease_separation_time_and_memory(run):
    pretrain = report.summarize(run).stage("pretrain")
    assert (pretrain.first_train_loss, pretrain.last_train_loss) == (1.0, 0.5)
    assert pretrain.loss_decrease == pytest.approx(0.5)
    assert pretrain.loss_decrease_pct == pytest.approx(50.0)
    assert pretrain.separation_best == 0.02  # val phase at epoch 2, not train's 0.07
    assert pretrain.separation_last == 0.04
    assert pretrain.median_epoch_time == 1.75
    assert pretrain.peak_host_rss_mb == 453.0  # rank 1, last epoch
    assert pretrain.peak_gpu_mb == 331.0
    finetune = report.summarize(run).stage("finetune")
    assert (finetune.separation_best, finetune.separation_last) == (0.3, 0.22)
    assert finetune.median_epoch_time == 3.0
    assert math.isnan(finetune.peak_gpu_mb)  # CPU run: empty peak_mb cells
    assert finetune.peak_host_rss_mb == 404.0


def test_evaluation_tables_and_final_evaluation_equal_evaluation_csv(run):
    summary = report.summarize(run)
    expected = evaluation_csv(run / "eval" / rundir.EVALUATION)
    assert list(summary.final_evaluation) == expected
    assert summary.final_evaluation_stage == "eval"
    assert list(summary.stage("finetune").evaluation) == evaluation_csv(
        run / "finetune" / rundir.EVALUATION)
    assert math.isnan(summary.stage("pretrain").evaluation[0]["mcc"])


def test_a_stage_that_trains_no_classifier_shows_no_separation_metrics_or_evaluation(
        tmp_path):
    run = make_run(tmp_path, pretrain_classifies=False)  # v3 as shipped: reconstruction only
    summary = report.summarize(run)
    pretrain, finetune = summary.stage("pretrain"), summary.stage("finetune")
    assert not pretrain.classifies and finetune.classifies
    assert pretrain.evaluation == () and math.isnan(pretrain.separation_best)
    assert pretrain.best_epoch == 2 and pretrain.loss_decrease == pytest.approx(0.5)
    assert finetune.evaluation and finetune.separation_best == 0.3
    text = "\n".join(report.format_summary(summary))
    pretrain_text = text.split("Stage finetune")[0]
    assert "val separation" not in pretrain_text and "auroc" not in pretrain_text
    assert "classifier            not trained (classification weight 0)" in pretrain_text
    old = run / "report" / "pretrain_separation.png"  # drawn by an earlier report
    old.parent.mkdir()
    old.write_bytes(PNG_SIGNATURE)
    files = report.write_report(run)
    assert {p.name for p in files.pngs if p.name.startswith("pretrain_")} == {
        "pretrain_losses.png", "pretrain_gradients.png", "pretrain_memory.png"}
    assert not old.exists()


def test_eval_only_stage_has_no_training_figures(run):
    stage = report.summarize(run).stage("eval")
    assert not stage.trained
    assert stage.mode == "eval_only"
    assert (stage.epochs, stage.best_epoch, stage.metric) == (0, None, None)
    assert math.isnan(stage.best_value) and math.isnan(stage.loss_decrease)
    assert stage.peak_host_rss_mb == 500.0
    assert [row["split"] for row in stage.evaluation] == ["val", "test"]


def test_to_dict_is_json_safe(run):
    data = report.summarize(run).to_dict()
    text = json.dumps(data, allow_nan=False)
    stages = {s["name"]: s for s in json.loads(text)["stages"]}
    assert stages["eval"]["best_value"] is None
    assert stages["finetune"]["peak_gpu_mb"] is None
    assert stages["pretrain"]["evaluation"][0]["mcc"] is None
    assert stages["pretrain"]["best_epoch"] == 2
    assert data["final_evaluation"][1]["split"] == "test"


def test_run_in_progress_with_torn_line_and_missing_files(tmp_path):
    run = make_run(tmp_path, state="RUNNING")
    status = rundir.read_json(run / rundir.STATUS)
    status["stages"] = {"pretrain": "SUCCEEDED", "finetune": "RUNNING"}
    rundir.write_json(run / rundir.STATUS, status)
    for path in (run / "eval").iterdir():
        path.unlink()
    (run / "eval").rmdir()
    finetune = run / "finetune"
    (finetune / rundir.GPU_MEMORY).unlink()
    (finetune / rundir.EVALUATION).unlink()
    (finetune / rundir.PROBABILITY_STATS).write_text("")  # created, nothing written yet
    with open(finetune / rundir.TRAINING, "a") as handle:
        handle.write("6,0.5,0.0001,0.0")  # the epoch being written: no newline yet

    summary = report.summarize(run)
    assert summary.state == "RUNNING"
    assert [s.name for s in summary.stages] == ["pretrain", "finetune"]
    stage = summary.stage("finetune")
    assert stage.state == "RUNNING"
    assert stage.epochs == 5 and stage.last_train_loss == 0.3  # torn row ignored
    assert stage.best_epoch == 3
    assert math.isnan(stage.separation_best) and math.isnan(stage.peak_host_rss_mb)
    assert stage.evaluation == ()
    assert summary.final_evaluation_stage == "pretrain"  # last stage that has one
    assert "\n".join(report.format_summary(summary))
    files = report.write_report(run, tmp_path / "out")
    assert files.html == tmp_path / "out" / "report.html" and files.html.is_file()
    names = {p.name for p in files.pngs}
    assert "finetune_losses.png" in names and "finetune_memory.png" not in names
    assert "finetune_separation.png" not in names


def test_empty_and_header_only_csvs_and_a_bare_run_directory(tmp_path):
    run = tmp_path / "run"
    (run / "train").mkdir(parents=True)
    (run / "train" / rundir.TRAINING).write_text("")
    rundir.write_csv(run / "train" / rundir.GRADIENT_STATS, rundir.GRADIENT_COLUMNS, [])
    summary = report.summarize(run)
    assert summary.state == "UNKNOWN" and summary.run_id == "run"
    stage = summary.stage("train")
    assert stage.trained and stage.epochs == 0 and stage.best_epoch is None
    assert summary.final_evaluation == ()
    files = report.write_report(run)
    assert files.pngs == [] and files.html.is_file()
    assert report.summarize(tmp_path / "missing").stages == ()


# --------------------------------------------------------------------------- text


def test_format_summary_reads_well_in_a_terminal(run):
    lines = report.format_summary(report.summarize(run))
    text = "\n".join(lines)
    assert "\x1b" not in text
    assert "Stage pretrain [SUCCEEDED]  4 epochs" in lines
    assert "  best Val Loss         0.7000 at epoch 2 (lowest)" in lines
    assert "  best Val AUROC        0.8500 at epoch 3 (highest)" in lines
    assert "1.0000 -> 0.5000  (decrease 0.5000, 50.0%)" in text
    assert "Stage eval [SUCCEEDED]  evaluation only" in lines
    final = lines[lines.index("Final evaluation (eval):") + 1:]
    assert final[0].split() == rundir.EVALUATION_COLUMNS
    assert final[2].split()[:2] == ["test", "0.9123"] and "0.7235" in final[2]
    assert len({len(line) for line in final}) == 1  # numbers right-aligned under headers
    assert final[0].index("auroc") + len("auroc") == final[2].index("0.9123") + len("0.9123")


# --------------------------------------------------------------------------- report


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> tuple[Path, report.ReportFiles]:
    """One report, written once for the tests below (matplotlib is the slow part)."""
    run = make_run(tmp_path_factory.mktemp("reported"), experiment=HOSTILE)
    return run, report.write_report(run)


def test_write_report_writes_valid_pngs_per_training_stage(reported):
    run, files = reported
    assert files.html == run / "report" / "report.html"
    expected = {f"{stage}_{kind}.png" for stage in ("pretrain", "finetune")
                for kind in TRAINING_PLOTS}
    assert {p.name for p in files.pngs} == expected
    assert all(p.parent == run / "report" for p in files.pngs)
    from hpcrun.report.plots import _key_of, _plot_key
    from hpcrun.report.summary import _load

    summary, tables = _load(run)
    for png in files.pngs:
        data = png.read_bytes()
        assert data.startswith(PNG_SIGNATURE), png
        assert len(data) > 3000, png
        # each records what it was drawn from: its stage's CSVs (size, time), its title's
        # stage, the best epoch it marks and the drawing code
        stage, kind = png.stem.rsplit("_", 1)
        assert _key_of(data) == _plot_key(kind, summary.stage(stage), tables[stage]), png
    assert not list((run / "report").glob(".*"))  # no temporary files left


def test_a_plot_is_drawn_again_from_changed_data_and_only_then(tmp_path):
    run = make_run(tmp_path)
    first = {p.name: p.read_bytes() for p in report.write_report(run).pngs}
    again = {p.name: p.read_bytes() for p in report.write_report(run).pngs}
    assert again == first  # nothing changed: every plot reused as it was
    grads = run / "finetune" / rundir.GRADIENT_STATS
    rows = rundir.read_rows(grads)
    rows[-1]["norm_max"] = str(float(rows[-1]["norm_max"]) * 50)
    rundir.write_csv(grads, rundir.GRADIENT_COLUMNS, [list(r.values()) for r in rows])
    changed = {p.name: p.read_bytes() for p in report.write_report(run).pngs}
    assert [n for n in changed if changed[n] != first[n]] == ["finetune_gradients.png"]
    # and what was drawn differs, not only the record of its inputs
    assert _pixels(changed["finetune_gradients.png"]) != _pixels(first["finetune_gradients.png"])


def _pixels(png: bytes) -> bytes:
    """A PNG's image data (its IDAT chunks), without the text chunks around them."""
    at, out = 8, b""
    while at + 8 <= len(png):
        length, kind = int.from_bytes(png[at:at + 4], "big"), png[at + 4:at + 8]
        if kind == b"IDAT":
            out += png[at + 8:at + 8 + length]
        at += 12 + length
    return out


def test_html_is_self_contained_with_every_png_embedded(reported):
    _, files = reported
    page = files.html.read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == len(files.pngs) == 10
    for png in files.pngs:
        assert base64.b64encode(png.read_bytes()).decode() in page
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and " src=\"data:" in page
    assert "0.9123" in page and "0.7235" in page  # the final evaluation table
    assert "<td>Val AUROC</td><td>3</td>" in page  # finetune's best epoch


def test_html_escapes_a_hostile_experiment_name(reported):
    run, files = reported
    assert report.summarize(run).experiment == HOSTILE
    page = files.html.read_text(encoding="utf-8")
    assert HOSTILE not in page and "<script" not in page
    assert html.escape(HOSTILE) in page


def test_the_report_directory_is_not_taken_for_a_stage(reported):
    run, _ = reported
    assert [s.name for s in report.summarize(run).stages] == ["pretrain", "finetune", "eval"]


def test_plots_without_data_are_skipped(tmp_path):
    run = tmp_path / "run"
    stage = run / "only"
    log = rundir.CsvLog(stage / rundir.TRAINING, rundir.training_columns([]))
    log.write([1, 0.1, 1.0, 0.9, 1e-3])
    log.write([2, 0.1, 0.8, 0.7, 1e-3])
    log.close()
    files = report.write_report(run)
    assert [p.name for p in files.pngs] == ["only_losses.png"]


def test_importing_report_does_not_import_plotting_or_dataframes():
    code = ("import sys, hpcrun.report; "
            "print(sorted(m for m in ('matplotlib', 'pandas', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_runs_that_choose_their_best_epoch_differently_are_not_confused(tmp_path):
    first, second = make_run(tmp_path / "a"), make_run(tmp_path / "b")
    text = (second / rundir.CONFIG).read_text()
    (second / rundir.CONFIG).write_text(text.replace("metric: val_auroc", "metric: val_mcc"))
    seeded = (first / rundir.CONFIG).read_text().replace("seed: 0", "seed: 7")
    (first / rundir.CONFIG).write_text(seeded)  # differs, but not in how it selects
    assert report.summarize(first).stage("finetune").metric == "Val AUROC"
    assert report.summarize(second).stage("finetune").metric == "Val MCC"
    assert report.summarize(first).stage("finetune").metric == "Val AUROC"


# --------------------------------------------------------------------------- compare


def _sweep(root: Path, points: int) -> list[Path]:
    """Runs that differ in their seed and in their test AUROC (highest for the last)."""
    runs = []
    for i in range(points):
        run = make_run(root / f"p{i}")
        text = (run / rundir.CONFIG).read_text()
        (run / rundir.CONFIG).write_text(text.replace("\nseed: 42\n", f"\nseed: {i}\n"))
        rows = [[*row[:1], 0.5 + i / 100, *row[2:]] for row in EVALUATION["eval"]]
        rundir.write_csv(run / "eval" / rundir.EVALUATION, rundir.EVALUATION_COLUMNS, rows)
        runs.append(run)
    return runs


def _pid_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def _die_in_a_worker(x: int) -> int:
    if os.getpid() != PARENT_PID:
        os._exit(3)
    return x


PARENT_PID = os.getpid()


@pytest.fixture
def forked(monkeypatch):
    """Work spread over two worker processes however many CPUs and threads there are."""
    monkeypatch.setattr(report.plots, "_workers", lambda: 2)
    monkeypatch.setattr(report.plots.threading, "active_count", lambda: 1)


def test_fan_out_spreads_work_over_worker_processes_in_order(forked):
    out = report._fan_out(_pid_square, list(range(40)), least=4)
    assert [square for _, square in out] == [x * x for x in range(40)]
    assert os.getpid() not in {pid for pid, _ in out}
    assert report._fan_out(_pid_square, [1, 2], least=4) == [(os.getpid(), 1), (os.getpid(), 4)]


def test_fan_out_does_the_work_itself_when_a_worker_dies(forked):
    assert report._fan_out(_die_in_a_worker, list(range(8)), least=4) == list(range(8))


def test_fan_out_does_the_work_itself_when_no_worker_can_start(forked, monkeypatch):
    import concurrent.futures

    def refused(*args, **kwargs):
        raise OSError(11, "Resource temporarily unavailable")  # fork under a process limit

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", refused)
    assert report._fan_out(_pid_square, [1, 2, 3, 4], least=2) == [
        (os.getpid(), x * x) for x in (1, 2, 3, 4)]


def test_compare_in_worker_processes_ranks_exactly_as_in_one(tmp_path, monkeypatch):
    runs = _sweep(tmp_path, 5)
    monkeypatch.setattr(report.plots, "_FORK_RUNS", 10**9)
    alone = report.compare(runs, out=tmp_path / "alone.png")
    with monkeypatch.context() as patch:
        patch.setattr(report.plots, "_FORK_RUNS", 2)
        patch.setattr(report.plots, "_workers", lambda: 2)
        patch.setattr(report.plots.threading, "active_count", lambda: 1)
        spread = report.compare(runs, out=tmp_path / "spread.png")
    assert spread.rows == alone.rows and spread.differing == alone.differing == ["seed"]
    assert [row["seed"] for row in spread.rows] == [4, 3, 2, 1, 0]
    assert spread.split == "test" and spread.rows[0]["value"] == pytest.approx(0.54)
    assert (tmp_path / "spread.png").read_bytes() == (tmp_path / "alone.png").read_bytes()


def test_a_report_leaves_the_callers_matplotlib_alone(run):
    code = ("import sys, matplotlib; matplotlib.use('svg'); from hpcrun import report; "
            f"report.write_report({str(run)!r}); "
            "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["svg", "False"]


# --------------------------------------------------------------------------- red flags


def test_the_page_shows_the_red_flags_or_says_there_are_none(tmp_path):
    healthy = report.write_report(make_run(tmp_path / "ok"))
    assert healthy.flags == []
    page = healthy.html.read_text(encoding="utf-8")
    assert '<h2>Red flags</h2><p class="healthy">none</p>' in page

    run = make_run(tmp_path / "bad", state="FAILED")
    rundir.write_json(run / rundir.FAILURE, {"rank": 1, "host": "node1", "stage": "finetune",
                                             "epoch": 3, "exception": f"boom {HOSTILE}"})
    files = report.write_report(run)
    assert [f.code for f in files.flags] == ["failed"]
    page = files.html.read_text(encoding="utf-8")
    flags = page[page.index("<h2>Red flags</h2>"):page.index("<h2>Final evaluation</h2>")]
    assert '<td class="flag">failed</td><td>finetune</td>' in flags
    assert "boom " + html.escape(HOSTILE) in flags and HOSTILE not in page


def test_flags_the_caller_knows_are_the_ones_the_page_shows(run):
    from hpcrun.diagnose import Flag

    known = [Flag("failed", "CUDA out of memory: lower the batch size", "finetune", 2)]
    files = report.write_report(run, flags=known)
    assert files.flags == known
    assert "CUDA out of memory: lower the batch size" in files.html.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- commands


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project as the cwd, with a job store of its own."""
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("HPCRUN_STORE", str(tmp_path / "state" / "jobs.sqlite"))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.chdir(root)
    return root


def finished_job(project: Path, state: str = "SUCCEEDED") -> tuple[str, Path]:
    """A local job that has ended, with its run directory and manifest as the trainer left
    them."""
    import socket

    from hpcrun.job import JobRecord
    from hpcrun.store import JobStore

    run = make_run(project, state=state)
    (run / rundir.LOGS).mkdir(exist_ok=True)
    rundir.write_manifest(run)
    (run / rundir.JOB_EXIT).write_text("0\n" if state == "SUCCEEDED" else "1\n")
    (run / rundir.JOB_PID).write_text("999999999\n")
    JobStore().add([JobRecord(id="f00dcafe", backend="local", host=socket.gethostname(),
                              experiment="v3", run_dir=str(run), project_dir=str(project))])
    return "f00dcafe", run


def report_paths(out: str) -> list[Path]:
    """The paths under the ``Report:`` line a command prints last."""
    lines = out.splitlines()
    return [Path(line.strip()) for line in lines[lines.index("Report:") + 1:] if line.strip()]


def test_fetch_verifies_prints_the_summary_and_writes_the_report(project):
    from conftest import invoke

    job, run = finished_job(project)
    answer = invoke("fetch", job)
    assert answer.code == 0, answer.err
    assert "verified against MANIFEST.sha256" in answer.out
    assert "Stage finetune [SUCCEEDED]  5 epochs" in answer.out
    assert "red flags: none" in answer.out
    paths = report_paths(answer.out)
    assert paths[0] == run / "report" / "report.html"
    assert {p.name for p in paths[1:]} == {f"{stage}_{kind}.png" for stage in
                                           ("pretrain", "finetune") for kind in TRAINING_PLOTS}
    assert all(p.is_file() for p in paths)

    again = invoke("--json", "fetch", job)  # the report it wrote does not spoil the manifest
    assert again.code == 0, again.err
    data = json.loads(again.out)
    assert data["verified"] is True and data["report_error"] is None
    assert data["report"]["html"] == str(run / "report" / "report.html")
    assert sorted(data["report"]["pngs"]) == sorted(str(p) for p in paths[1:])


def test_a_partial_fetch_writes_the_report_of_the_epochs_so_far(project):
    from conftest import invoke

    job, run = finished_job(project)
    answer = invoke("fetch", "--partial", job)
    assert answer.code == 0, answer.err
    assert "partial: not verified" in answer.out
    assert report_paths(answer.out)[0] == run / "report" / "report.html"


def test_report_prints_the_summary_and_red_flags_before_the_paths(project):
    from conftest import invoke

    job, run = finished_job(project, state="FAILED")
    rundir.write_json(run / rundir.FAILURE, {"rank": 0, "host": "node1", "stage": "finetune",
                                             "epoch": 3, "exception": "RuntimeError: boom"})
    for ref in (job, str(run)):  # a job, or a run directory alone
        answer = invoke("report", ref)
        assert answer.code == 0, answer.err
        out = answer.out
        assert out.index("Stage pretrain [SUCCEEDED]") < out.index("Final evaluation (eval):")
        assert "  best Val AUROC        0.8500 at epoch 3 (highest)" in out
        assert "! failed [finetune]: rank 0 on node1: RuntimeError: boom" in out
        assert "what to do: read the cause" in out
        assert out.index("red flags:") < out.index("Report:")
        paths = report_paths(out)
        assert paths[0].name == "report.html" and len(paths) == 11
        assert "RuntimeError: boom" in paths[0].read_text(encoding="utf-8")

    data = json.loads(invoke("--json", "report", str(run)).out)
    assert data["summary"]["run_id"] == run.name and data["html"].endswith("report.html")
    assert [f["code"] for f in data["flags"]] == ["failed"] and len(data["pngs"]) == 10


def runs_of_one_experiment(root: Path, val_losses: list[float]) -> list[Path]:
    """Runs side by side in ``root/runs/v3``, as a user's globs find them: run ``i`` has the
    test AUROC 0.5 + i/100 and finetune's validation loss ``val_losses[i]`` at its lowest."""
    runs = []
    for i, (source, lowest) in enumerate(zip(_sweep(root / "made", len(val_losses)),
                                             val_losses, strict=True)):
        run = root / "runs" / "v3" / f"run{i}"
        run.parent.mkdir(parents=True, exist_ok=True)
        source.rename(run)
        status = rundir.read_json(run / rundir.STATUS)
        rundir.write_json(run / rundir.STATUS, {**status, "run_id": run.name})
        rows = rundir.read_rows(run / "finetune" / rundir.TRAINING)
        for row, loss in zip(rows, [lowest + 0.3, lowest + 0.1, lowest, lowest + 0.2, 9.0],
                             strict=True):
            row["Val Loss"] = loss
        rundir.write_csv(run / "finetune" / rundir.TRAINING, list(rows[0]),
                         [list(r.values()) for r in rows])
        runs.append(run)
    return runs


def test_compare_over_a_glob_again_skips_what_it_wrote_there_with_a_note(project):
    from conftest import invoke

    runs = runs_of_one_experiment(project, [0.3, 0.2, 0.1])
    (project / "runs" / "v3" / "20260101-000000-beef-sweep" / "logs").mkdir(parents=True)
    folder = project / "runs" / "v3"

    first = invoke("compare", *map(str, runs))
    assert first.code == 0, first.err
    assert (folder / "compare.png").read_bytes().startswith(PNG_SIGNATURE)
    everything = sorted(str(p) for p in folder.iterdir())  # runs/v3/*, the second time
    assert str(folder / "compare.png") in everything
    again = invoke("compare", *everything)
    assert again.code == 0, again.err
    assert [line.split()[1] for line in again.out.splitlines()[2:5]] == ["run2", "run1", "run0"]
    assert again.err.count("\n") == 1 and again.err.startswith("hpcrun: note: skipped 2 ")
    assert "compare.png (not a directory)" in again.err and "-sweep (no status.json)" in again.err

    data = json.loads(invoke("--json", "compare", *everything).out)
    assert [r["run"] for r in data["rows"]] == ["run2", "run1", "run0"]
    assert len(data["skipped"]) == 2

    alone = invoke("compare", str(runs[0]), str(folder / "compare.png"))
    assert alone.code == 2 and "at least two runs" in alone.err and "compare.png" in alone.err


@pytest.mark.parametrize(("metric", "guess"), [("aucroc", "auroc"), ("val_loss", "loss"),
                                               ("precission", "precision"), ("xyz", None)])
def test_an_unknown_metric_is_refused_in_one_line_with_the_valid_ones(project, metric, guess):
    from conftest import invoke

    runs = runs_of_one_experiment(project, [0.3, 0.2])
    answer = invoke("compare", *map(str, runs), "--metric", metric)
    assert answer.code == 2 and answer.out == ""
    assert len(answer.err.splitlines()) == 1
    assert answer.err.startswith(f"hpcrun: error: --metric {metric!r}: unknown metric")
    assert (f"(did you mean {guess!r}?)" in answer.err) == (guess is not None)
    assert "auroc, auprc, accuracy, sensitivity, specificity, precision, recall, f1, mcc, " \
        "loss" in answer.err
    assert not (project / "runs" / "v3" / "compare.png").exists()
    with pytest.raises(report.BadInput):
        report.compare(runs, metric=metric)


def test_compare_by_loss_ranks_the_lowest_validation_loss_of_the_last_stage_first(tmp_path):
    runs = runs_of_one_experiment(tmp_path, [0.25, 0.05, 0.15])
    ranked = report.compare(runs, metric="loss")
    assert (ranked.metric, ranked.mode, ranked.split) == ("loss", "min", "val")
    assert [r["run"] for r in ranked.rows] == ["run1", "run2", "run0"]
    assert [r["value"] for r in ranked.rows] == pytest.approx([0.05, 0.15, 0.25])
    # upper case is the same metric; --mode max turns the order round
    assert [r["run"] for r in report.compare(runs, metric="LOSS", mode="max").rows] == [
        "run0", "run2", "run1"]
    by_auroc = report.compare(runs)
    assert (by_auroc.mode, by_auroc.split) == ("max", "test")
    assert [r["run"] for r in by_auroc.rows] == ["run2", "run1", "run0"]


def test_a_plot_drawn_on_a_reused_canvas_is_the_one_a_fresh_canvas_draws(run):
    """Plots of a report share one figure; none may inherit anything (scale, formatters,
    colours, limits, legend) from the plot drawn before it."""
    summary, data = report._load(run)
    tasks = [(kind, summary.stage(stage), data[stage]) for stage in ("finetune", "pretrain")
             for kind in report._PLOTS]
    fresh = [report._draw([task])[0] for task in tasks]
    order = [3, 8, 0, 5, 9, 1, 4, 2, 7, 6]  # log scale before linear ones, stages mixed
    shared = report._draw([tasks[i] for i in order])
    assert all(png is not None for png in fresh)
    assert [shared[order.index(i)] for i in range(len(tasks))] == fresh


def test_a_report_drawn_in_worker_processes_is_the_one_drawn_in_one(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    alone = report.write_report(run, tmp_path / "alone")
    with monkeypatch.context() as patch:
        patch.setattr(report.plots, "_workers", lambda: 2)
        patch.setattr(report.plots.threading, "active_count", lambda: 1)
        spread = report.write_report(run, tmp_path / "spread")
    assert [p.name for p in spread.pngs] == [p.name for p in alone.pngs] and len(alone.pngs) == 10
    assert [p.read_bytes() for p in spread.pngs] == [p.read_bytes() for p in alone.pngs]
    assert spread.html.read_bytes() == alone.html.read_bytes()


# --------------------------------------------------------------------------- plots kept


def test_a_report_of_an_unchanged_run_keeps_its_plots_and_imports_no_plotting(run):
    first = report.write_report(run)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in first.pngs}
    from PIL import Image

    with Image.open(first.pngs[0]) as image:  # the key rides in a valid PNG text chunk
        assert len(image.text["hpcrun-plot"]) == 32
    code = ("import sys; from hpcrun import report; "
            f"files = report.write_report({str(run)!r}); "
            "print(len(files.pngs), 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["10", "False"]
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in first.pngs} == before
    assert report.write_report(run).html.read_bytes() == first.html.read_bytes()


def test_only_the_plots_whose_data_changed_are_drawn_again(run):
    first = {p.name: p.stat().st_mtime_ns for p in report.write_report(run).pngs}
    with open(run / "finetune" / rundir.TRAINING, "a") as handle:  # the next epoch
        handle.write("6,1.0,0.2,0.3,0.9,0.5,0.5,0.5,0.5,0.001\n")
    (run / "report" / "pretrain_memory.png").unlink()
    (run / "report" / "pretrain_gradients.png").write_bytes(PNG_SIGNATURE + b"not a plot")
    files = report.write_report(run)
    again = {p.name: p.stat().st_mtime_ns for p in files.pngs}
    redrawn = {name for name in first if again[name] != first[name]}
    assert redrawn == {"finetune_losses.png", "finetune_metrics.png", "pretrain_gradients.png",
                       "pretrain_memory.png"}
    assert (run / "report" / "pretrain_gradients.png").read_bytes()[:8] == PNG_SIGNATURE
    assert report.summarize(run).stage("finetune").epochs == 6


def test_memory_of_many_ranks_is_a_band_naming_the_rank_that_holds_most(tmp_path):
    """512 ranks: one legend line per rank covered the chart (and took a minute to draw)."""
    run = make_run(tmp_path)
    values = {"Train Loss": [1.0, 0.8, 0.7], "Val Loss": [1.1, 0.9, 0.8], "Epoch Time": [1] * 3,
              "Val AUROC": [0.6, 0.7, 0.8], "separation": [0.1, 0.2, 0.3]}
    write_training_stage(run / "pretrain", values, ranks=512)
    summary, data = report._load(run)
    stage = next(s for s in summary.stages if s.name == "pretrain")
    canvas = report._Canvas()
    png = report._plot_memory(stage, data["pretrain"], canvas)
    assert png and png.startswith(b"\x89PNG")
    labels = canvas.ax.get_legend_handles_labels()[1]
    assert len(labels) == 6, labels
    assert "GPU peak: min-max of 512 ranks" in labels
    assert "GPU peak: most, rank 511 (831 MB)" in labels  # 300 + 10 * epoch 2 + rank 511


def test_compare_names_the_stage_key_that_differs_not_the_whole_pipeline():
    from hpcrun.report.comparison import _flatten

    pipeline = [{"name": "pretrain", "mode": "train_only", "init_from": None},
                {"name": "finetune", "mode": "full_pipeline", "init_checkpoint": "best"}]
    flat = _flatten({"pipeline": pipeline, "model": {"hidden": [128, 64]}})
    assert flat["pipeline.finetune.init_checkpoint"] == "best"
    assert flat["pipeline.pretrain.mode"] == "train_only"
    assert "pipeline" not in flat and flat["model.hidden"] == [128, 64]


def test_a_one_epoch_plot_has_whole_epoch_ticks():
    canvas = report._Canvas()
    ax = canvas.axes("Loss per epoch", "loss")
    ax.plot([1], [0.5], marker="o")
    assert canvas.png().startswith(report.PNG_SIGNATURE)
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    ax = canvas.axes("Loss per epoch", "loss")  # the next plot on the canvas scales again
    ax.plot([1, 2, 3, 4, 5, 6], [0.5] * 6)
    canvas.png()
    assert ax.get_xlim()[1] - ax.get_xlim()[0] > 4
