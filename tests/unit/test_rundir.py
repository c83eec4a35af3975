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
