"""The run-directory owner: CSV logs, truncation on resume, atomic files, manifests."""

from __future__ import annotations

import json

import pytest

from hpcrun import rundir


def test_csv_log_appends_with_fixed_header_and_full_precision(tmp_path):
    path = tmp_path / "training.csv"
    cols = rundir.training_columns(["auroc"])
    assert cols == ["Epoch", "Epoch Time", "Train Loss", "Val Loss", "Val AUROC",
                    "Learning Rate"]
    log = rundir.CsvLog(path, cols)
    log.write({"Epoch": 1, "Epoch Time": 0.5, "Train Loss": 1 / 3, "Val Loss": 0.25,
               "Val AUROC": float("nan"), "Learning Rate": 1e-3})
    log.close()
    again = rundir.CsvLog(path, cols)  # reopening keeps the header, appends
    again.write([2, 0.4, 0.2, 0.2, 0.9, 1e-3])
    again.close()
    rows = rundir.read_rows(path)
    assert [r["Epoch"] for r in rows] == ["1", "2"]
    assert float(rows[0]["Train Loss"]) == 1 / 3
    with pytest.raises(ValueError, match="header"):
        rundir.CsvLog(path, ["epoch", "other"])


def test_a_csv_from_before_a_column_was_added_is_continued_with_its_own_header(tmp_path):
    path = tmp_path / "gpu_memory.csv"
    old = rundir.CsvLog(path, ["epoch", "host_rss_mb"])
    old.write([1, 100.0])
    old.close()
    resumed = rundir.CsvLog(path, ["epoch", "host_rss_mb", "host_total_mb"])
    resumed.write([2, 110.0, 8000.0])  # the writer gives every column it knows
    resumed.write({"epoch": 3, "host_rss_mb": 120.0, "host_total_mb": 8000.0})
    resumed.close()
    assert path.read_text() == "epoch,host_rss_mb\n1,100.0\n2,110.0\n3,120.0\n"
    with pytest.raises(ValueError, match="header"):
        rundir.CsvLog(path, ["epoch"])  # a file the writer cannot continue


def test_truncate_drops_rows_past_the_checkpoint_and_a_torn_line(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("epoch,phase,v\n1,train,1\n1,val,2\n2,train,3\n3,train,4\n3,va")
    assert rundir.truncate_epochs(path, 2) == 1
    assert path.read_text() == "epoch,phase,v\n1,train,1\n1,val,2\n2,train,3\n"
    assert rundir.truncate_epochs(path, 2) == 0


def test_read_rows_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n3,")
    assert rundir.read_rows(path) == [{"a": "1", "b": "2"}]


def test_read_table_gives_the_rows_by_column_and_pads_short_rows(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("epoch,phase,v\n1,train,0.5\n\n1,val\n2,train,nan,extra\n3,tr")
    table = rundir.read_table(path)
    assert len(table) == 3 and table.header == ["epoch", "phase", "v"]
    assert list(table.column("phase")) == ["train", "val", "train"]
    assert table.floats("v")[0] == 0.5 and all(v != v for v in table.floats("v")[1:])
    assert list(table.column("missing")) == ["", "", ""]
    assert table.rows()[1] == {"epoch": "1", "phase": "val", "v": ""}
    assert len(rundir.read_table(tmp_path / "absent.csv")) == 0


def test_manifest_detects_changes_and_escapes(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "training.csv").write_text("Epoch\n1\n")
    (tmp_path / "status.json").write_text("{}")
    rundir.write_manifest(tmp_path)
    assert rundir.verify_manifest(tmp_path) == []
    (tmp_path / "s" / "training.csv").write_text("Epoch\n2\n")
    assert rundir.verify_manifest(tmp_path) == ["s/training.csv: checksum mismatch"]
    (tmp_path / "MANIFEST.sha256").write_text("0" * 64 + "  ../outside\n")
    assert "outside" in rundir.verify_manifest(tmp_path)[0]


def test_write_json_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "status.json"
    rundir.write_json(path, {"state": "RUNNING"})
    rundir.write_json(path, {"state": "SUCCEEDED"})
    assert rundir.read_json(path) == {"state": "SUCCEEDED"}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_csv_tail_reads_only_new_complete_rows_and_survives_rewrites(tmp_path):
    path = tmp_path / "training.csv"
    tail = rundir.CsvTail(path)
    assert tail.refresh() == []  # not there yet
    path.write_text("Epoch,Train Loss\n1,0.5\n2,0.4")  # a torn second row
    assert [r["Epoch"] for r in tail.refresh()] == ["1"]
    with open(path, "a") as handle:
        handle.write("\n3,0.3\n")
    assert [r["Epoch"] for r in tail.refresh()] == ["2", "3"]
    assert tail.refresh() == []
    assert [r["Epoch"] for r in tail.rows] == ["1", "2", "3"]
    rundir.truncate_epochs(path, 1)  # a resume rewrote the file (a new inode)
    with open(path, "a") as handle:
        handle.write("2,0.45\n")
    assert [r["Epoch"] for r in tail.refresh()] == ["1", "2"]
    assert [r["Train Loss"] for r in tail.rows] == ["0.5", "0.45"]


def test_csv_tail_floats_convert_each_row_once_and_start_again_after_a_rewrite(tmp_path):
    path = tmp_path / "probability_stats.csv"
    path.write_text("epoch,phase,separation\n1,train,0.1\n1,val,0.2\n")
    tail = rundir.CsvTail(path)
    tail.refresh()
    assert tail.floats("separation") == [0.1, 0.2]
    assert tail.floats("separation", ("phase", "val")) == [0.2]
    tail.rows[0]["separation"] = "9"  # converted already: not looked at again
    with open(path, "a") as handle:
        handle.write("2,train,\n2,val,oops\n3,val,0.4\n")
    tail.refresh()
    values = tail.floats("separation")
    assert values[:2] == [0.1, 0.2] and values[4] == 0.4 and all(v != v for v in values[2:4])
    assert tail.floats("separation", ("phase", "val"))[-1] == 0.4
    assert tail.index("phase") == {"train": [0, 2], "val": [1, 3, 4]}
    generation = tail.generation
    rundir.truncate_epochs(path, 1)  # a resume rewrote the file
    with open(path, "a") as handle:
        handle.write("2,val,0.25\n")
    tail.refresh()
    assert tail.generation > generation
    assert tail.floats("separation") == [0.1, 0.2, 0.25]
    assert tail.index("phase") == {"train": [0], "val": [1, 2]}


def test_csv_tail_skips_blank_and_unparsable_lines(tmp_path):
    path = tmp_path / "x.csv"
    oversized = b"9," + b"x" * 200_000  # over the csv module's field limit: it raises
    path.write_bytes(b"a,b\n1,2\n\n" + oversized + b"\n5,\xff\n")
    tail = rundir.CsvTail(path)
    assert tail.refresh() == [{"a": "1", "b": "2"}, {"a": "5", "b": "\ufffd"}]
    assert tail.floats("a") == [1.0, 5.0]


def test_to_int_reads_whole_numbers_only():
    assert [rundir.to_int(t) for t in ("3", "3.0", "", None, "x", "2.5", "nan")] == [
        3, 3, None, None, None, None, None]


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", "null", '"x"',
                                  '{"state": 3, "epoch": "x", "stages": [1], "stage": {}}'])
def test_damaged_records_read_as_missing_fields_not_errors(tmp_path, text):
    for name in (rundir.STATUS, rundir.FAILURE, rundir.METADATA):
        (tmp_path / name).write_text(text)
    status = rundir.read_status(tmp_path / rundir.STATUS)
    assert status.state is None and status.epoch is None and status.stages == {}
    assert status.detail() == {} and status.succeeded() == set()
    failure = rundir.read_failure(tmp_path / rundir.FAILURE)
    assert failure is None or (failure.rank is None and failure.traceback == [])
    assert rundir.read_metadata(tmp_path / rundir.METADATA).pipeline == []
    assert rundir.read_status(tmp_path / "missing.json") == rundir.Status()


def test_records_keep_the_fields_of_a_good_file(tmp_path):
    (tmp_path / rundir.STATUS).write_text(json.dumps({
        "state": "RUNNING", "stage": "b", "epoch": 3, "epochs": 10.0, "updated_at": 5,
        "stages": {"a": "SUCCEEDED", "b": "RUNNING", "c": None}, "message": None}))
    status = rundir.read_status(tmp_path / rundir.STATUS)
    assert (status.state, status.stage, status.epoch, status.epochs) == ("RUNNING", "b", 3, 10)
    assert status.stages == {"a": "SUCCEEDED", "b": "RUNNING"} and status.updated_at == 5.0
    assert status.succeeded() == {"a"}
    (tmp_path / rundir.FAILURE).write_text(json.dumps({
        "rank": 1, "host": "n2", "exception": "ValueError: x", "traceback": "one line",
        "epoch": 2, "stage": "b"}))
    failure = rundir.read_failure(tmp_path / rundir.FAILURE)
    assert failure.who() == "rank 1 on n2" and failure.traceback == ["one line"]
    assert failure.brief() == {"rank": 1, "host": "n2", "stage": "b", "epoch": 2,
                               "exception": "ValueError: x"}


def test_a_job_script_asks_rundir_whether_the_run_was_preempted(tmp_path):
    """The requeue decision reads status.json as JSON (the job scripts grepped for
    '"state": "PREEMPTED"', which another writer's spacing would miss)."""
    run = tmp_path / "run"
    run.mkdir()
    for text, code in (('{"state":"PREEMPTED"}', 0), ('{ "state" : "PREEMPTED" }', 0),
                       ('{"state": "FAILED", "message": "\\"state\\": \\"PREEMPTED\\""}', 1),
                       ("not json", 1)):
        (run / rundir.STATUS).write_text(text)
        assert rundir.main(["preempted", str(run)]) == code, text
    assert rundir.main(["preempted", str(tmp_path / "none")]) == 1
    assert rundir.main(["other"]) == 2


# --- edges of the readers and writers ------------------------------------------------------

import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def test_records_keep_every_field_of_a_good_metadata_file(tmp_path):
    (tmp_path / rundir.METADATA).write_text(json.dumps({
        "run_id": "r1", "experiment": "v3", "state": "RUNNING", "pipeline": ["a", 2],
        "world_size": "4", "hosts": ["n1", "n2"], "job_ids": [17], "extra": {}}))
    assert rundir.read_metadata(tmp_path / rundir.METADATA) == rundir.Metadata(
        run_id="r1", experiment="v3", state="RUNNING", pipeline=["a", "2"], world_size=4,
        hosts=["n1", "n2"], job_ids=["17"])
    assert rundir.Metadata.of({"hosts": "n1", "pipeline": None}) == rundir.Metadata()


def test_status_detail_names_each_field_it_reports():
    status = rundir.Status.of({"state": "RUNNING", "stage": "s", "epoch": 2, "epochs": 5,
                               "stages": {"s": "RUNNING"}, "message": "hi"})
    assert status.detail() == {"stage": "s", "epoch": 2, "epochs": 5,
                               "stages": {"s": "RUNNING"}, "message": "hi"}


def test_the_preempted_check_reads_its_arguments_and_explains_its_usage(tmp_path, capsys,
                                                                     monkeypatch):
    (tmp_path / rundir.STATUS).write_text('{"state": "PREEMPTED"}')
    monkeypatch.setattr(sys, "argv", ["rundir", "preempted", str(tmp_path)])
    assert rundir.main() == 0
    for argv in (["preempted"], ["other", str(tmp_path)], ["preempted", str(tmp_path), "x"]):
        assert rundir.main(argv) == 2
    assert capsys.readouterr().err == "usage: python -m hpcrun.rundir preempted RUN_DIR\n" * 3


def test_filter_rows_counts_every_dropped_row_and_leaves_empty_files_alone(tmp_path):
    path = tmp_path / "x.csv"
    assert rundir.filter_rows(path, lambda row: True) == 0  # no file
    path.write_text("")
    assert rundir.filter_rows(path, lambda row: False) == 0 and path.read_text() == ""
    path.write_text("epoch,v\n1,a\nx,b\n2,c\n3,d\n\n")
    # a row whose epoch is not a number is dropped; a blank line is a row with no epoch
    assert rundir.truncate_epochs(path, 1) == 4
    assert path.read_text() == "epoch,v\n1,a\n"


def test_empty_and_ragged_csvs_read_without_errors(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("")
    assert rundir.read_rows(path) == [] and len(rundir.read_table(path)) == 0
    path.write_text("a,b,c\n1\n1,2,3,4\n")
    assert rundir.read_rows(path) == [{"a": "1", "b": None, "c": None},
                                      {"a": "1", "b": "2", "c": "3"}]
    table = rundir.read_table(path)
    assert list(table.column("c")) == ["", "3"] and table.rows()[1] == {"a": "1", "b": "2",
                                                                        "c": "3"}
    empty = rundir.Table(["a", "b"], [])
    assert len(empty) == 0 and tuple(empty.column("a")) == () and empty.rows() == []


def test_column_names_of_training_and_loss_component_logs():
    assert rundir.training_columns(["f1", "custom"])[4:6] == ["Val F1", "Val custom"]
    assert rundir.loss_component_columns(["a", "b"], learned=True) == [
        "epoch", "phase", "a", "b", "total", "weight_a", "weight_b", "sigma_a", "sigma_b"]
    assert rundir.loss_component_columns(["a"], learned=False) == ["epoch", "phase", "a",
                                                                    "total"]


def test_write_json_layout_paths_and_non_finite_numbers(tmp_path):
    path = tmp_path / "x.json"
    rundir.write_json(path, {"b": 1, "a": [Path("p")]})
    assert path.read_text() == '{\n  "b": 1,\n  "a": [\n    "p"\n  ]\n}\n'
    with pytest.raises(ValueError):
        rundir.write_json(path, {"v": float("nan")})
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        rundir.write_json(path, {"v": object()})
    assert rundir.read_json(path) == {"b": 1, "a": ["p"]}  # the failed writes changed nothing


def test_write_csv_writes_the_header_and_formatted_cells(tmp_path):
    path = tmp_path / "p.csv"
    rundir.write_csv(path, ["a", "b", "c"], [[1, 0.1, None], [True, float("nan"), "x"]])
    assert path.read_bytes() == b"a,b,c\n1,0.1,\n1,nan,x\n"


def test_umask_is_read_without_changing_it():
    old = os.umask(0o027)
    try:
        assert rundir._umask() == 0o027 and os.umask(0o027) == 0o027
    finally:
        os.umask(old)


def test_what_the_manifest_covers():
    for rel in ("job.sh", "system.csv", "report/a.png", "work/x.py", "logs/job.out",
                "logs/train.rank0.log", "logs/rank1.pid", "logs/slurm-1.out"):
        assert not rundir.manifested(rel), rel
    for rel in ("s/training.csv", "logs/other.log", "abcd/rank_stats.csv", "config.yaml",
                "logs/"):
        assert rundir.manifested(rel), rel


def test_manifest_entries_skip_what_is_written_after_it_and_sort_by_path(tmp_path):
    for rel in ("s/training.csv", "s.b/x", "s/.hidden", "report/r.png", "logs/job.out",
                "logs/note.txt", "job.sh", "z.txt", "MANIFEST.sha256"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    (tmp_path / "s" / "link").symlink_to(tmp_path / "z.txt")
    rels = [rel for _, rel in rundir.manifest_entries(tmp_path)]
    assert rels == ["logs/note.txt", "s/training.csv", "s.b/x", "z.txt"]


def test_verify_manifest_names_each_problem(tmp_path):
    (tmp_path / "a  b.csv").write_text("x")
    rundir.write_manifest(tmp_path)
    assert rundir.verify_manifest(tmp_path) == []
    (tmp_path / "MANIFEST.sha256").write_text(
        "0" * 64 + "  ../outside\n" + "0" * 64 + "  ../other\n" + "0" * 64 + "  gone.csv\n")
    assert rundir.verify_manifest(tmp_path) == [
        "'../outside': path outside the run directory",
        "'../other': path outside the run directory",
        "gone.csv: missing (or not a regular file)"]
    (tmp_path / "MANIFEST.sha256").unlink()
    assert rundir.verify_manifest(tmp_path) == ["MANIFEST.sha256 is missing"]
    (tmp_path / "MANIFEST.sha256").mkdir()
    assert rundir.verify_manifest(tmp_path) == [
        "MANIFEST.sha256 cannot be read: not a regular file"]


def test_csv_tail_index_grows_with_appended_rows(tmp_path):
    path = tmp_path / "gpu_memory.csv"
    path.write_text("epoch,rank\n1,0\n1,\n")
    tail = rundir.CsvTail(path)
    tail.refresh()
    assert tail.index("rank") == {"0": [0], "": [1]}
    with open(path, "a") as handle:
        handle.write("2,0\n")
    tail.refresh()
    assert tail.index("rank") == {"0": [0, 2], "": [1]}


def test_run_tables_read_each_file_once_per_round(tmp_path):
    path = tmp_path / "training.csv"
    path.write_text("Epoch\n1\n")
    tables = rundir.RunTables()
    assert len(tables.rows(path)) == 1
    with open(path, "a") as handle:
        handle.write("2\n")
    assert len(tables.rows(path)) == 1  # same round: not read again
    tables.refresh()
    assert tables.floats(path, "Epoch") == [1.0, 2.0]


def test_run_dir_paths_and_stage_folders_in_pipeline_order(tmp_path):
    run = rundir.RunDir(tmp_path)
    assert repr(run) == f"RunDir({str(tmp_path)!r})"
    assert run.checkpoint("s") == tmp_path / "s" / "checkpoints" / "best.pt"
    assert run.checkpoint("s", "last") == tmp_path / "s" / "checkpoints" / "last.pt"
    assert rundir.RunDir(tmp_path / "missing").stages() == []
    for rel in ("b/training.csv", "a/evaluation.csv", "report/training.csv",
                "logs/training.csv", "c/other.txt", "d/checkpoints/best.pt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    (tmp_path / "training.csv").write_text("")  # a file, not a stage
    rundir.write_json(run.status, {"stages": {"d": "SUCCEEDED", "b": "RUNNING"}})
    assert run.stages() == ["d", "b", "a"]


def test_run_ids_start_with_the_local_time():
    run_id = rundir.new_run_id(1_000_000_000.5, "ab12")
    assert re.fullmatch(r"\d{8}-\d{6}-ab12", run_id)
    assert run_id == time.strftime("%Y%m%d-%H%M%S", time.localtime(1_000_000_000)) + "-ab12"
