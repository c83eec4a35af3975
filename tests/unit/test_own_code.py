"""Your own program as a job: the run: config, rendering, and hpcrun.rank around a program
that never imports hpcrun (run as processes, without torchrun)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import invoke

from hpcrun import rundir
from hpcrun.config import fill_args, load_config
from hpcrun.errors import ConfigError
from hpcrun.render import JobSpec, program


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "train.py").write_text("print('hi')\n")
    monkeypatch.chdir(root)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return root


# --------------------------------------------------------------------------- config


def test_a_script_is_an_experiment_named_after_it_with_one_stage(project):
    cfg = load_config("scripts/train.py", ["params.lr=0.1"], project_dir=project,
                      script_args=["--lr", "{params.lr}", "--epochs", "3"])
    assert cfg.experiment == "train"
    assert [s.name for s in cfg.pipeline] == ["train"]
    run = cfg.stage_run("train")
    assert run.script == "scripts/train.py" and run.launcher == "torchrun"
    spec = JobSpec(id="j", experiment="train", run_dir="/runs/x", config_path="/runs/x/c",
                   bundle_dir="/b", runs=(("train", run),), params=cfg.params)
    assert program(spec, "train") == ["-m", "hpcrun.rank", "--run-dir", "/runs/x", "--stage",
                                      "train", "--script", "scripts/train.py", "--", "--lr",
                                      "0.1", "--epochs", "3"]
    # the trainer's own sections are left out of the run's config.yaml
    assert "training:" not in cfg.to_yaml() and "params:" in cfg.to_yaml()


@pytest.mark.parametrize("name, args, message", [
    ("scripts/missing.py", [], "not found (looked for "),
    ("../outside.py", [], "lies outside the project"),
    ("scripts/train.py", ["{params.nope}"], "{params.nope} names no param"),
    ("scripts/train.py", ["{lr}"], "{lr} is not a placeholder"),
])
def test_bad_scripts_and_placeholders_are_one_line(project, name, args, message):
    (project.parent / "outside.py").write_text("")
    with pytest.raises(ConfigError) as caught:
        load_config(name, project_dir=project, script_args=args)
    assert message in caught.value.message and "\n" not in caught.value.message


def test_run_takes_one_program_and_stages_change_their_args(project):
    (project / "two.yaml").write_text("experiment: x\nrun: {script: scripts/train.py, "
                                      "command: [ls]}\n")
    with pytest.raises(ConfigError, match="run names both script and command"):
        load_config("two.yaml", project_dir=project)
    (project / "pipe.yaml").write_text(
        "experiment: pipe\nparams: {epochs: 2}\n"
        "run: {script: scripts/train.py, args: [--epochs, '{params.epochs}']}\n"
        "pipeline:\n  - {name: pretrain}\n"
        "  - {name: finetune, run: {args: [--init, '{stages.pretrain.dir}/best.pt']}}\n"
        "  - {name: export, run: {module: mypkg.export, launcher: python}}\n")
    cfg = load_config("pipe.yaml", project_dir=project)
    spec = JobSpec(id="j", experiment="pipe", run_dir="/r", config_path="/r/c", bundle_dir="/b",
                   runs=tuple((s.name, cfg.stage_run(s.name)) for s in cfg.pipeline),
                   params=cfg.params)
    assert program(spec, "pretrain")[-3:] == ["--", "--epochs", "2"]
    assert program(spec, "finetune")[-3:] == ["--", "--init", "/r/pretrain/best.pt"]
    assert program(spec, "export") == ["--launcher=python", "-m", "hpcrun.rank", "--run-dir",
                                       "/r", "--stage", "export", "--module", "mypkg.export",
                                       "--", "--epochs", "2"]
    (project / "stage.yaml").write_text("experiment: s\npipeline: [{name: a, run: {args: [x]}}]\n")
    with pytest.raises(ConfigError, match="has no run: section"):
        load_config("stage.yaml", project_dir=project)


def test_fill_args_formats_params_as_text_or_json():
    assert fill_args(["{params.lr}", "{params.on}", "{params.name}", "{{x}}", "{run_dir}/c"],
                     {"lr": 0.001, "on": True, "name": "a b"}, {}, "/r/s") == \
        ["0.001", "true", "a b", "{x}", "/r/s/c"]


def test_submit_errors_exit_2_and_write_nothing(project):
    for argv, text in [(["submit", "--", "--lr", "3"], "a -- with no script before it"),
                       (["submit", "scripts/nope.py"], "not found"),
                       (["submit", "v3", "--", "--x"], "arguments after -- are for a script")]:
        answer = invoke(*argv)
        assert answer.code == 2, answer
        assert text in answer.err and "Traceback" not in answer.err
    assert not (project / "runs").exists()


def test_a_git_ignored_script_is_refused_before_anything_is_written(project):
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    (project / ".gitignore").write_text("scripts/secret_train.py\n")
    (project / "scripts" / "secret_train.py").write_text("")
    answer = invoke("submit", "scripts/secret_train.py", "--dry-run")
    assert answer.code == 2 and "is not in the bundle" in answer.err


def test_dry_run_shows_the_program_and_each_sweep_points_words(project):
    answer = invoke("--json", "submit", "scripts/train.py", "--backend", "slurm", "--dry-run",
                    "--sweep", "params.tag=a b,$(touch PWNED)", "--", "--tag", "{params.tag}")
    assert answer.code == 0, answer.err
    script = json.loads(answer.out)["plans"][0]["script"]
    # bash splits each point's line back into exactly the words that were rendered
    head = script[:script.index("cd ")]
    for index, tag in enumerate(["a b", "$(touch PWNED)"]):
        words = subprocess.run(
            ["bash", "-c", head.split("\n", 1)[1] + 'printf "%s\\n" "${program[@]}"'],
            env={**os.environ, "SLURM_ARRAY_TASK_ID": str(index)}, capture_output=True,
            text=True, cwd=project, check=True).stdout.splitlines()
        assert words[-3:] == ["--", "--tag", tag]
        assert words[:2] == ["-m", "hpcrun.rank"]
    assert not (project / "PWNED").exists()


# --------------------------------------------------------------------------- hpcrun.rank


def rank(tmp_path: Path, code: str, *args: str, stage: str = "train", env=None,
         config: str | None = None) -> subprocess.CompletedProcess[str]:
    root = tmp_path / "runs" / "exp" / "r1"
    root.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (root / rundir.CONFIG).write_text(config)
    script = tmp_path / "prog.py"
    script.write_text(code)
    environ = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    return subprocess.run([sys.executable, "-m", "hpcrun.rank", "--run-dir", str(root),
                           "--stage", stage, "--script", str(script), "--", *args],
                          capture_output=True, text=True, timeout=60,
                          env={**environ, **(env or {})}, cwd=tmp_path)


def test_rank_runs_a_bare_script_with_its_environment_and_records_success(tmp_path):
    proc = rank(tmp_path, "import os, sys, json\n"
                "print(json.dumps({k: v for k, v in os.environ.items() "
                "if k.startswith('HPCRUN_')}), sys.argv[1:])\n", "--lr", "0.1",
                config="experiment: exp\nparams: {lr: 0.1}\npipeline: [{name: train}]\n")
    assert proc.returncode == 0, proc.stderr
    root = tmp_path / "runs" / "exp" / "r1"
    seen = json.loads(proc.stdout.split("} ")[0] + "}")
    assert seen["HPCRUN_RUN_DIR"] == str(root / "train")
    assert seen["HPCRUN_STAGE"] == "train" and seen["HPCRUN_EXPERIMENT"] == "exp"
    assert json.loads(seen["HPCRUN_PARAMS"]) == {"lr": 0.1} and seen["HPCRUN_RESUMED"] == "0"
    assert "['--lr', '0.1']" in proc.stdout
    assert "['--lr', '0.1']" in (root / "logs" / "train.rank0.log").read_text()
    status = json.loads((root / "status.json").read_text())
    assert status["state"] == "SUCCEEDED" and status["stages"] == {"train": "SUCCEEDED"}
    assert rundir.verify_manifest(root) == []
    # a finished stage is skipped when the job runs again (a resumed pipeline)
    again = rank(tmp_path, "raise SystemExit('must not run')")
    assert again.returncode == 0 and "already finished; skipping" in again.stdout


def test_rank_records_a_failing_scripts_exception_from_its_traceback(tmp_path):
    proc = rank(tmp_path, "def f():\n    raise ValueError('planted failure')\n"
                "print('working')\nf()\n")
    assert proc.returncode == 1
    root = tmp_path / "runs" / "exp" / "r1"
    failure = json.loads((root / "failure.json").read_text())
    assert failure["exception"] == "ValueError: planted failure"
    assert failure["rank"] == 0 and failure["stage"] == "train" and failure["exit_code"] == 1
    assert any("planted failure" in line for line in failure["traceback"])
    status = json.loads((root / "status.json").read_text())
    assert status["state"] == "FAILED" and "planted failure" in status["message"]


def test_rank_takes_exit_75_as_a_preemption_and_a_second_start_as_a_resume(tmp_path):
    proc = rank(tmp_path, "raise SystemExit(75)")
    assert proc.returncode == 75
    root = tmp_path / "runs" / "exp" / "r1"
    status = json.loads((root / "status.json").read_text())
    assert status["state"] == "PREEMPTED" and status["stages"]["train"] == "PREEMPTED"
    again = rank(tmp_path, "import os; print('resumed', os.environ['HPCRUN_RESUMED'])")
    assert again.returncode == 0 and "resumed 1" in again.stdout


def test_rank_forwards_signals_and_writes_the_programs_pid(tmp_path):
    root = tmp_path / "runs" / "exp" / "r1"
    root.mkdir(parents=True)
    script = tmp_path / "wait.py"
    script.write_text("import signal, sys, time\n"
                      "signal.signal(signal.SIGUSR1, lambda *a: sys.exit(75))\n"
                      "print('ready', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-m", "hpcrun.rank", "--run-dir", str(root),
                             "--stage", "train", "--script", str(script)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    host, pid = (root / "logs" / "rank0.pid").read_text().split()
    assert int(pid) != proc.pid  # the program's own pid: signal-trainer.sh reaches it
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=30) == 75
    assert json.loads((root / "status.json").read_text())["state"] == "PREEMPTED"


# --------------------------------------------------------------------------- the sampler


def test_sampler_writes_rows_while_the_job_runs_and_ends_with_it(tmp_path):
    job = subprocess.Popen([sys.executable, "-c", "import time\nx = bytearray(50 << 20)\n"
                            "t = time.time()\nwhile time.time() - t < 3: pass\n"])
    sampler = subprocess.Popen([sys.executable, "-m", "hpcrun.sampler", "--run-dir",
                                str(tmp_path), "--watch", str(job.pid), "--interval", "0.5"])
    job.wait(timeout=30)
    assert sampler.wait(timeout=10) == 0  # it ends by itself with the job it watches
    rows = rundir.read_rows(tmp_path / rundir.SYSTEM)
    assert rundir.read_header(tmp_path / rundir.SYSTEM) == rundir.SYSTEM_COLUMNS
    assert len(rows) >= 2
    busy = [float(r["cpu_pct"]) for r in rows[1:]]
    assert max(busy) > 30  # the job spun a core
    assert max(float(r["rss_mb"]) for r in rows) > 40
    assert all(r["gpu"] == "" for r in rows)  # no GPU here: one row per sample, empty columns
    assert not rundir.manifested(rundir.SYSTEM)


# --------------------------------------------------------------------------- system.csv


def system_csv(root: Path, samples: list[tuple[float, list[float | None]]],
               host: str = "node1") -> None:
    lines = [",".join(rundir.SYSTEM_COLUMNS)]
    for when, utils in samples:
        for gpu, util in enumerate(utils):
            cells = {"time": when, "host": host, "gpu": gpu if util is not None else "",
                     "gpu_util_pct": "" if util is None else util, "cpu_pct": 100.0,
                     "rss_mb": 500.0, "processes": 3}
            lines.append(",".join(str(cells.get(c, "")) for c in rundir.SYSTEM_COLUMNS))
    root.mkdir(parents=True, exist_ok=True)
    (root / rundir.SYSTEM).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("samples, flagged", [
    # both GPUs under 30 % from t=100 to t=500: 400 s > 300 s
    ([(0, [90, 80]), (100, [10, 5]), (300, [20, 0]), (500, [29, 1]), (600, [95, 90])], True),
    # one GPU busy: not idle
    ([(t, [10, 90]) for t in range(0, 1000, 100)], False),
    # idle for 200 s, busy, idle for 200 s: no stretch over 300 s
    ([(0, [0, 0]), (200, [0, 0]), (300, [80, 80]), (400, [0, 0]), (600, [0, 0])], False),
    # no GPU at all (empty columns on a CPU host)
    ([(t, [None]) for t in range(0, 1000, 100)], False),
])
def test_gpu_idle_flag_from_system_csv(tmp_path, samples, flagged):
    from hpcrun.diagnose import diagnose

    system_csv(tmp_path / "run", samples)
    flags = [f for f in diagnose(tmp_path / "run") if f.code == "gpu_idle"]
    assert bool(flags) == flagged, flags
    if flagged:
        assert "node1" in flags[0].message and "400 s" in flags[0].message


def test_gpu_idle_is_found_as_rows_arrive_and_the_threshold_is_the_configs(tmp_path):
    from hpcrun.diagnose import Diagnosis

    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.CONFIG).write_text("experiment: x\nmonitor: {gpu_idle_pct: 50, "
                                     "gpu_idle_s: 60}\n")
    diagnosis = Diagnosis(run)
    system_csv(run, [(0, [40]), (30, [45])])
    assert not [f for f in diagnosis.flags() if f.code == "gpu_idle"]
    system_csv(run, [(0, [40]), (30, [45]), (90, [49])])  # the same file, grown
    diagnosis.tables.refresh()  # what a monitor refresh does
    assert [f.code for f in diagnosis.flags() if f.code == "gpu_idle"] == ["gpu_idle"]


def test_report_draws_the_system_plot(tmp_path):
    from hpcrun import report

    run = tmp_path / "run"
    system_csv(run, [(0, [90]), (60, [50]), (120, [70])])
    (run / rundir.STATUS).write_text('{"state": "SUCCEEDED"}')
    curves = report.system_series(run / rundir.SYSTEM)
    assert curves["GPU 0 util % (node1)"] == ([0.0, 1.0, 2.0], [90.0, 50.0, 70.0])
    assert curves["CPU % (node1)"][1] == [100.0, 100.0, 100.0]
    files = report.write_report(run)
    assert (run / "report" / "system.png") in files.pngs
    assert "GPU utilisation and CPU over the job" in files.html.read_text()


def test_sbatch_without_a_slurm_configuration_is_one_line_naming_the_way_out(project,
                                                                            tmp_path,
                                                                            monkeypatch):
    """Backend auto never picks a scheduler whose client cannot work here (it runs
    locally); asked for SLURM anyway, the answer names the cause and --backend local, not a
    resource."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text("#!/bin/sh\necho 'sbatch: fatal: Could not establish a "
                                 "configuration source' >&2\nexit 1\n")
    (fake / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_CONF", raising=False)
    answer = invoke("--json", "submit", "--dry-run", "scripts/train.py")
    assert answer.code == 0 and json.loads(answer.out)["jobs"][0]["backend"] == "local"
    answer = invoke("submit", "--backend", "slurm", "scripts/train.py")
    assert answer.code == 2 and "SLURM is not configured" in answer.err
    assert "--backend local" in answer.err and "resources" not in answer.err
    assert not (project / "runs").exists()


def test_an_sbatch_cut_off_before_it_answered_is_asked_again(project, tmp_path, monkeypatch):
    """sbatch killed by SIGPIPE with nothing said (munged closed the socket under a client a
    loaded machine ran late) queued nothing: the submit asks again, once the job is queued
    it is not asked again."""
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "calls"
    (fake / "sbatch").write_text(
        "#!/bin/bash\n"
        "case \"$*\" in *--test-only*) echo 'Job 1 to start' >&2; exit 0;; esac\n"
        f"echo x >> {calls}\n"
        f"[ \"$(wc -l < {calls})\" -ge 2 ] || kill -PIPE $$\n"
        "echo 4242\n")
    (fake / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    answer = invoke("--json", "submit", "scripts/train.py", "--backend", "slurm")
    assert answer.code == 0, answer.err
    assert json.loads(answer.out)["jobs"][0]["native_id"] == "4242"
    assert calls.read_text().count("x") == 2
