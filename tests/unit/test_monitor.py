"""The live view of a job: sparklines, the incremental copy of a remote run directory, and
``Monitor`` snapshots and events on planted run directories."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from hpcrun import rundir
from hpcrun.config import load_config
from hpcrun.errors import OperationFailed
from hpcrun.job import JobRecord, JobStatus
from hpcrun.monitor import Monitor, sparkline
from hpcrun.ops import JobView


def test_sparkline_scales_between_min_and_max_and_marks_non_finite_values():
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert sparkline([5.0, math.nan, 1.0]) == "█!▁"
    assert sparkline([2.0, 2.0]) == "▄▄"
    assert len(sparkline(list(range(100)), width=10)) == 10
    assert sparkline([]) == ""


def _row(epoch: int) -> str:
    return f"{epoch},0.5,{1 / epoch:.4f}\n"


def _remote(tmp_path: Path) -> Path:
    remote = tmp_path / "remote"
    (remote / "train").mkdir(parents=True)
    rundir.write_json(remote / rundir.STATUS, {"state": "RUNNING", "epoch": 1})
    (remote / "train" / rundir.TRAINING).write_text("Epoch,Epoch Time,Val Loss\n" + _row(1))
    (remote / "train" / rundir.PREDICTIONS).write_text("split,index,label,probability\n")
    return remote


def test_read_since_sends_only_appended_bytes_and_whole_rewritten_files(tmp_path):
    remote, local = _remote(tmp_path), tmp_path / "local"
    known: dict = {}
    first = rundir.read_since(remote, known)
    assert set(first) == {rundir.STATUS, f"train/{rundir.TRAINING}"}  # no predictions
    rundir.mirror(local, json.loads(json.dumps(first)), known)  # the answer crosses as JSON
    tail = rundir.CsvTail(local / "train" / rundir.TRAINING)
    assert [r["Epoch"] for r in tail.refresh()] == ["1"]

    assert rundir.read_since(remote, known) == {}  # nothing new: nothing sent
    with open(remote / "train" / rundir.TRAINING, "a") as handle:
        handle.write(_row(2))
    second = rundir.read_since(remote, known)
    change = second[f"train/{rundir.TRAINING}"]
    assert change["reset"] is False and change["data"] == _row(2)
    rundir.mirror(local, second, known)
    assert [r["Epoch"] for r in tail.refresh()] == ["2"]

    # a resume rewrites the CSV (a new, shorter file): the copy and its reader start again
    rundir.write_atomic(remote / "train" / rundir.TRAINING,
                        b"Epoch,Epoch Time,Val Loss\n" + _row(1).encode())
    rundir.write_json(remote / rundir.STATUS, {"state": "RUNNING", "epoch": 1, "resumed": True})
    third = rundir.read_since(remote, known)
    assert third[f"train/{rundir.TRAINING}"]["reset"] is True
    rundir.mirror(local, third, known)
    tail.refresh()
    assert [r["Epoch"] for r in tail.rows] == ["1"]
    assert rundir.read_json(local / rundir.STATUS)["resumed"] is True


def test_mirror_never_writes_outside_the_copy(tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    rundir.mirror(local, {"../escaped.csv": {"identity": [1, 2, 0], "reset": True,
                                              "data": "x"}}, {})
    assert not (tmp_path / "escaped.csv").exists()


def test_run_tables_read_each_file_once_per_refresh(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a\n1\n")
    tables = rundir.RunTables()
    assert len(tables.rows(path)) == 1
    with open(path, "a") as handle:
        handle.write("2\n")
    assert len(tables.rows(path)) == 1  # same round
    tables.refresh()
    assert len(tables.rows(path)) == 2


# --------------------------------------------------------------------------- Monitor


def plant(root: Path, epochs_done: int, epochs: int = 10, state: str = "RUNNING",
          val_loss=None) -> Path:
    """A run of one stage 'finetune' (v3's finetune selects on Val AUROC, highest)."""
    stage = root / "finetune"
    stage.mkdir(parents=True, exist_ok=True)
    rundir.write_atomic(root / rundir.CONFIG, load_config("v3").to_yaml().encode())
    rundir.write_json(root / rundir.STATUS, {
        "state": state, "stage": "finetune", "epoch": epochs_done, "epochs": epochs,
        "stages": {"finetune": state}, "updated_at": time.time()})
    training = rundir.CsvLog(stage / rundir.TRAINING, rundir.training_columns(["auroc"]))
    memory = rundir.CsvLog(stage / rundir.GPU_MEMORY, rundir.MEMORY_COLUMNS)
    grads = rundir.CsvLog(stage / rundir.GRADIENT_STATS, rundir.GRADIENT_COLUMNS)
    for e in range(1, epochs_done + 1):
        training.write({"Epoch": e, "Epoch Time": 2.0 if e != 2 else 30.0,
                        "Train Loss": 1 / e, "Val Loss": val_loss(e) if val_loss else 1 / e,
                        "Val AUROC": [0.6, 0.9, 0.7, 0.8][(e - 1) % 4], "Learning Rate": 1e-3})
        grads.write({"epoch": e, "steps": 4, "norm_mean": 0.5, "norm_std": 0.1,
                     "norm_min": 0.2, "norm_max": 0.9, "norm_last": 0.5,
                     "clipped_fraction": 0.0, "nonfinite_steps": 0})
        for rank in (0, 1):
            memory.write({"epoch": e, "rank": rank, "host": "n1", "device": f"cuda:{rank}",
                          "allocated_mb": 100 + e, "reserved_mb": 150, "peak_mb": 200 + e,
                          "device_used_mb": 1000, "utilization_pct": 50,
                          "device_total_mb": 80000, "host_rss_mb": 500 + rank,
                          "host_total_mb": 64000})
    for log in (training, memory, grads):
        log.close()
    return root


class FakeBackend:
    def __init__(self) -> None:
        self.down = False
        self.caught_up = 0

    def catch_up(self, record, known) -> None:
        if self.down:
            raise OperationFailed("cannot reach 127.0.0.1:22022 (Connection refused)")
        self.caught_up += 1

    def read_log(self, record, rank=None) -> str:
        return "Traceback ...\ntorch.OutOfMemoryError: CUDA out of memory.\n"


def monitor_of(run: Path, states: list[str]) -> tuple[Monitor, FakeBackend]:
    record = JobRecord(id="abc123", backend="local", host="h", experiment="v3",
                       run_dir=str(run), project_dir=str(run), submitted_at=time.time() - 60)
    backend = FakeBackend()
    return Monitor(record, lambda: JobView(record, JobStatus(states.pop(0) if len(states) > 1
                                                             else states[0])), backend), backend


def test_snapshot_has_progress_eta_best_by_the_stage_metric_curves_and_memory(tmp_path):
    run = plant(tmp_path / "run", epochs_done=4)
    monitor, _ = monitor_of(run, ["RUNNING"])
    snap = monitor.refresh()
    assert (snap.stage, snap.epoch, snap.epochs) == ("finetune", 4, 10)
    assert snap.epoch_time_s == 2.0 and snap.eta_s == 12.0  # median, not the slow epoch
    assert snap.best_column == "Val AUROC" and snap.best["Epoch"] == "2"
    assert snap.latest["Epoch"] == "4"
    assert set(snap.series) == {"val loss", "grad norm", "auroc"}
    assert snap.series["auroc"] == [0.6, 0.9, 0.7, 0.8]
    assert [(m["rank"], m["peak_mb"]) for m in snap.memory] == [("0", "204"), ("1", "204")]
    assert 55 < snap.elapsed_s < 120
    data = json.loads(json.dumps(snap.to_dict()))
    assert data["eta_s"] == 12.0 and data["job"]["state"] == "RUNNING"


def test_a_refresh_reads_only_new_rows(tmp_path):
    run = plant(tmp_path / "run", epochs_done=2)
    monitor, backend = monitor_of(run, ["RUNNING"])
    monitor.refresh()
    with open(run / "finetune" / rundir.TRAINING, "a") as handle:
        handle.write("3,2.0,0.3,0.3,0.75,0.001\n")
    tail = monitor.tables._tails[run / "finetune" / rundir.TRAINING]
    before = tail._offset
    snap = monitor.refresh()
    assert snap.latest["Epoch"] == "3" and snap.series["val loss"][-1] == 0.3
    assert snap.epoch == 3 and snap.eta_s == 14.0  # status.json still says 2: rows win
    assert tail._offset - before == len("3,2.0,0.3,0.3,0.75,0.001\n")
    assert backend.caught_up == 2


def test_events_fire_once_per_new_flag_and_once_at_the_end(tmp_path):
    run = plant(tmp_path / "run", epochs_done=3)
    monitor, _ = monitor_of(run, ["RUNNING", "RUNNING", "FAILED", "FAILED"])
    assert monitor.events(monitor.refresh()) == []
    with open(run / "finetune" / rundir.TRAINING, "a") as handle:
        handle.write("4,2.0,nan,nan,0.75,0.001\n")
    events = monitor.events(monitor.refresh())
    assert [(e.kind, e.flag.code) for e in events] == [("flag", "nan_loss")]
    env = events[0].environment()
    assert env["HPCRUN_EVENT"] == "flag" and env["HPCRUN_FLAG"] == "nan_loss"
    assert env["HPCRUN_JOB_ID"] == "abc123" and env["HPCRUN_STAGE"] == "finetune"

    last = monitor.refresh()
    events = monitor.events(last)
    assert [e.kind for e in events] == ["flag", "finished"]  # the failure, then the end
    assert "CUDA out of memory" in events[0].flag.message
    assert events[1].environment()["HPCRUN_STATE"] == "FAILED"
    assert monitor.events(monitor.refresh()) == []


def test_a_lost_connection_keeps_the_last_data_and_recovers(tmp_path):
    run = plant(tmp_path / "run", epochs_done=3)
    monitor, backend = monitor_of(run, ["RUNNING"])
    first = monitor.refresh()
    backend.down = True
    lost = monitor.refresh()
    assert "Connection refused" in lost.connection
    assert lost.latest == first.latest and lost.state == "RUNNING"
    assert monitor.events(lost) == []
    backend.down = False
    assert monitor.refresh().connection is None


def test_the_first_refresh_of_an_unreachable_job_is_an_error(tmp_path):
    run = plant(tmp_path / "run", epochs_done=1)
    monitor, backend = monitor_of(run, ["RUNNING"])
    backend.down = True
    with pytest.raises(OperationFailed):
        monitor.refresh()


def _memory_row(epoch: int, rank: int, used: float) -> str:
    return f"{epoch},{rank},n1,cuda:{rank},101,150,201,{used},80000,50,500,64000\n"


def test_the_same_flag_on_another_rank_is_a_new_event(tmp_path):
    run = plant(tmp_path / "run", epochs_done=2)
    memory = run / "finetune" / rundir.GPU_MEMORY
    monitor, _ = monitor_of(run, ["RUNNING"])
    assert monitor.events(monitor.refresh()) == []
    with open(memory, "a") as handle:
        # (rank 1 dips first: the growth check, which sees device memory rise, stays quiet)
        handle.write(_memory_row(3, 0, 79000) + _memory_row(3, 1, 900))
    events = monitor.events(monitor.refresh())
    assert [(e.flag.code, e.flag.rank) for e in events] == [("memory_near_capacity", 0)]
    assert events[0].environment()["HPCRUN_RANK"] == "0"
    with open(memory, "a") as handle:
        handle.write(_memory_row(4, 0, 78000) + _memory_row(4, 1, 79500))
    events = monitor.events(monitor.refresh())
    assert [(e.flag.code, e.flag.rank) for e in events] == [("memory_near_capacity", 1)]
    assert monitor.events(monitor.refresh()) == []


def test_damaged_rows_do_not_stop_a_refresh(tmp_path):
    run = plant(tmp_path / "run", epochs_done=4)
    stage = run / "finetune"
    with open(stage / rundir.TRAINING, "a") as handle:
        handle.write(",1.0,0.5,0.4,0.7,0.001\n")
    with open(stage / rundir.GRADIENT_STATS, "a") as handle:
        handle.write("5,4,0.5,0.1,0.2,0.9,0.5,0.0,nan\n")
    with open(stage / rundir.GPU_MEMORY, "a") as handle:
        handle.write("5,one,n1,cuda:1,,,,,,,,\n5,,n1\n")
    rundir.write_json(run / rundir.STATUS, {"state": "RUNNING", "stage": "finetune",
                                            "epoch": "four", "epochs": [10],
                                            "updated_at": "now"})
    monitor, _ = monitor_of(run, ["RUNNING"])
    snap = monitor.refresh()
    assert snap.epoch == 0 and snap.best["Epoch"] == "2" and snap.flags == []
    assert [m["rank"] for m in snap.memory] == ["0", "1"]
    assert snap.series["val loss"][-1] == 0.4


def test_a_snapshot_keeps_its_curves_and_a_resume_starts_them_again(tmp_path):
    run = plant(tmp_path / "run", epochs_done=4)
    monitor, _ = monitor_of(run, ["RUNNING"])
    first = monitor.refresh()
    with open(run / "finetune" / rundir.TRAINING, "a") as handle:
        handle.write("5,2.0,0.2,0.95,0.99,0.001\n")
    second = monitor.refresh()
    assert len(first.series["val loss"]) == 4 and len(second.series["val loss"]) == 5
    assert second.best["Epoch"] == "5"
    for name in (rundir.TRAINING, rundir.GRADIENT_STATS, rundir.GPU_MEMORY):
        rundir.truncate_epochs(run / "finetune" / name, 2)  # resumed from epoch 2
    third = monitor.refresh()
    assert third.series["val loss"] == [1.0, 0.5] and third.best["Epoch"] == "2"
    assert third.epoch_time_s == 16.0  # the median of 2 s and 30 s: the later rows are gone


def test_an_evaluation_stage_reads_evaluating_only_while_the_job_runs():
    from types import SimpleNamespace

    from hpcrun.cli.views import progress_text

    running = SimpleNamespace(epochs=0, stage="eval", stages={"eval": "RUNNING"},
                              state="RUNNING")
    assert progress_text(running) == "stage eval: evaluating"
    done = SimpleNamespace(epochs=0, stage="eval", stages={"eval": "SUCCEEDED"},
                           state="SUCCEEDED")
    assert progress_text(done) == "stage eval: succeeded"
    failed = SimpleNamespace(epochs=0, stage="eval", stages={}, state="FAILED")
    assert progress_text(failed) == "stage eval: failed"


# --------------------------------------------------------------------------- the watch loop


class _Polls:
    """A source whose refreshes are given in advance: (state, connection) pairs."""

    def __init__(self, *polls, fail_at=None):
        from types import SimpleNamespace

        self.snaps = [SimpleNamespace(state=s, connection=c) for s, c in polls]
        self.fail_at, self.calls = fail_at, 0

    def refresh(self):
        self.calls += 1
        if self.calls == self.fail_at:
            from hpcrun.errors import HpcrunError

            raise HpcrunError("lost for good")
        return self.snaps[self.calls - 1]

    def events(self, snap):
        return [f"event {self.calls}"]


class _Sink:
    def __init__(self):
        self.seen = []

    def show(self, snap):
        self.seen.append(("show", snap.state))

    def end(self, snap):
        self.seen.append(("end", snap.state))

    def close(self):
        self.seen.append(("close", None))


def test_a_watch_shows_each_refresh_backs_off_while_lost_and_ends_with_the_job():
    from hpcrun.monitor import watch

    source = _Polls(("PENDING", None), ("RUNNING", "ssh: timed out"), ("RUNNING", "again"),
                    ("SUCCEEDED", "still lost"), ("SUCCEEDED", None))
    sink, waits, events = _Sink(), [], []
    last = watch(source, sink, interval=2.0, sleep=waits.append, notify=events.append)
    assert last is source.snaps[-1]
    # an ended state seen while the machine cannot be reached is not the end yet
    assert sink.seen == [("show", "PENDING"), ("show", "RUNNING"), ("show", "RUNNING"),
                         ("show", "SUCCEEDED"), ("end", "SUCCEEDED"), ("close", None)]
    assert waits == [2.0, 4.0, 8.0, 16.0]
    assert events == [f"event {n}" for n in range(1, 6)]


def test_a_watch_once_ends_at_the_first_refresh_and_an_error_still_closes_the_sink():
    from hpcrun.errors import HpcrunError
    from hpcrun.monitor import watch

    sink, waits = _Sink(), []
    watch(_Polls(("RUNNING", None)), sink, interval=1.0, once=True, sleep=waits.append)
    assert sink.seen == [("end", "RUNNING"), ("close", None)] and waits == []

    sink = _Sink()
    with pytest.raises(HpcrunError):
        watch(_Polls(("RUNNING", None), fail_at=2), sink, interval=1.0, sleep=lambda s: None)
    assert sink.seen == [("show", "RUNNING"), ("close", None)]
