"""Red flags on planted run directories: each raises exactly its flag (in-process; the real
v3 run's check is in tests/integration/test_red_flags_real_run.py)."""

from __future__ import annotations

import math
import random
import statistics
import time
from pathlib import Path

from planted_runs import healthy_memory, plant

from hpcrun import rundir
from hpcrun.diagnose import Diagnosis, diagnose, failure_cause


def codes(flags) -> list[str]:
    return sorted(f.code for f in flags)


def test_healthy_planted_run_has_no_flags(tmp_path):
    assert codes(diagnose(plant(tmp_path / "ok"))) == []


def test_nan_loss(tmp_path):
    run = plant(tmp_path / "nan", train=lambda e: math.nan if e >= 5 else 0.6 / e)
    flags = diagnose(run)
    assert codes(flags) == ["nan_loss"] and flags[0].epoch == 5


def test_exploding_gradients(tmp_path):
    run = plant(tmp_path / "boom", grads=lambda e: 50.0 if e == 6 else 0.5)
    flags = diagnose(run)
    assert codes(flags) == ["exploding_gradients"] and flags[0].epoch == 6


def reference_jump(means: list[float], factor: float) -> int | None:
    """The rule as first written: each epoch against the median of every earlier one."""
    for i, mean in enumerate(means):
        earlier = [m for m in means[:i] if math.isfinite(m)]
        if len(earlier) >= 2 and math.isfinite(mean) and mean > factor * statistics.median(
                earlier):
            return i + 1
    return None


def test_the_gradient_jump_rule_matches_the_median_of_every_earlier_epoch(tmp_path):
    rng = random.Random(7)
    for case in range(6):
        means = [rng.choice([math.nan, 0.01, 0.2, 1.0, 5.0, 30.0]) if rng.random() < 0.3
                 else rng.uniform(0.3, 0.6) for _ in range(40)]
        expected = reference_jump(means, 10.0)
        run = plant(tmp_path / f"case{case}", epochs=len(means),
                    grads=lambda e, means=means: means[e - 1])
        found = [f for f in diagnose(run) if f.code == "exploding_gradients"]
        assert [f.epoch for f in found] == ([expected] if expected else []), means


def test_the_gradient_jump_check_is_not_quadratic(tmp_path):
    """Twenty times the epochs costs about twenty to forty times the time; a median of every
    earlier epoch recomputed per epoch, even by copying a sorted list, costs over a hundred
    times: a ratio within one run, not a clock. The two sizes are timed in turn, best of
    three each, so a busy machine slows both."""
    runs = {epochs: plant(tmp_path / f"long{epochs}", epochs=epochs,
                          grads=lambda e: 0.5 + (e % 7) * 0.01) for epochs in (2_000, 40_000)}
    best = dict.fromkeys(runs, math.inf)
    for _ in range(3):
        for epochs, run in runs.items():
            began = time.perf_counter()
            assert "exploding_gradients" not in codes(diagnose(run))
            best[epochs] = min(best[epochs], time.perf_counter() - began)
    assert best[40_000] / best[2_000] < 75, best


def test_damaged_cells_are_read_as_missing_not_raised(tmp_path):
    run = plant(tmp_path / "damaged")
    stage = run / "train"
    with open(stage / rundir.TRAINING, "a") as handle:
        handle.write(",1.0,0.5,0.4,0.7,0.001\n")  # no epoch
        handle.write("x,1.0,nan,nan,0.7,0.001\n")  # an epoch that is not a number
    with open(stage / rundir.GRADIENT_STATS, "a") as handle:
        handle.write("9,10,0.5,0.1,0.2,0.9,0.5,0.0,nan\n")
        handle.write("10,ten,,,,,,,\n")
        handle.write("\0\0\0\n")
    with open(stage / rundir.PROBABILITY_STATS, "a") as handle:
        handle.write("nine,val,0.1,0.1,0.1,0.1,0.0\n")
    with open(stage / rundir.GPU_MEMORY, "a") as handle:
        handle.write("9,one,n1,cpu,,,,,,,NaN,\n9,1,n1,cpu,,,,,,,big,\n,0,n1,cpu\n")
    rundir.write_json(run / rundir.STATUS, {"state": "RUNNING", "stage": "train",
                                            "epoch": "eight", "updated_at": "soon"})
    assert codes(diagnose(run)) == []
    # the rows that cannot be placed in an epoch do not hide what the others show
    with open(stage / rundir.TRAINING, "a") as handle:
        handle.write("10,1.0,nan,0.3,0.7,0.001\n")
    flags = diagnose(run)
    assert codes(flags) == ["nan_loss"] and flags[0].epoch == 10


def test_stall(tmp_path):
    run = plant(tmp_path / "stall", status="RUNNING", updated_at=time.time() - 600)
    flags = diagnose(run)
    assert codes(flags) == ["stalled"] and "no heartbeat" in flags[0].message


def test_the_stall_floor_is_a_threshold(tmp_path):
    # 1 s epochs: 5x the median is 5 s, so 90 s of silence is over the 60 s floor ...
    run = plant(tmp_path / "short", status="RUNNING", updated_at=time.time() - 90)
    assert codes(diagnose(run)) == ["stalled"]
    # ... and under a floor of 120 s
    run = plant(tmp_path / "patient", status="RUNNING", updated_at=time.time() - 90,
                overrides=("monitor.stall_min_s=120",))
    assert codes(diagnose(run)) == []


def test_separation_collapse_and_its_thresholds(tmp_path):
    collapse = lambda e: 0.4 if e < 6 else 0.15  # noqa: E731
    flags = diagnose(plant(tmp_path / "collapse", separation=collapse))
    assert codes(flags) == ["separation_collapsed"] and "0.400 to 0.150" in flags[0].message
    lenient = plant(tmp_path / "lenient", separation=collapse,
                    overrides=("monitor.separation_collapse_ratio=0.3",))
    assert codes(diagnose(lenient)) == []
    high_bar = plant(tmp_path / "bar", separation=collapse,
                     overrides=("monitor.separation_collapse_min=0.5",))
    assert codes(diagnose(high_bar)) == []


def test_host_memory_growth_on_one_rank(tmp_path):
    def leak(e, rank):
        row = healthy_memory(e, rank)
        return {**row, "host_rss_mb": 500.0 + 40 * e} if rank == 1 else row

    flags = diagnose(plant(tmp_path / "leak", memory=leak))
    assert codes(flags) == ["memory_growth"]
    assert flags[0].rank == 1 and "rank 1 host memory grew from 580 to 820 MB" in \
        flags[0].message


def test_gpu_memory_creeping_up(tmp_path):
    def creep(e, rank):  # torch's peak grows every epoch on both ranks
        return {**healthy_memory(e, rank), "peak_mb": 200.0 + 15 * e}

    flags = diagnose(plant(tmp_path / "creep", memory=creep))
    assert codes(flags) == ["gpu_memory_growth", "gpu_memory_growth"]
    assert [f.rank for f in flags] == [0, 1] and "(peak_mb)" in flags[0].message

    def nvml_only(e, rank):  # no torch counters: NVML's view of the device
        return {**healthy_memory(e, rank), "peak_mb": None,
                "device_used_mb": 1000.0 + 100 * e * rank}

    flags = diagnose(plant(tmp_path / "nvml", memory=nvml_only))
    assert codes(flags) == ["gpu_memory_growth"] and flags[0].rank == 1
    assert "(device_used_mb)" in flags[0].message


def test_host_memory_near_capacity_sums_the_ranks_of_one_host(tmp_path):
    def full(e, rank):  # each rank alone holds 48 % of the host, both 96 %
        return {**healthy_memory(e, rank), "host_rss_mb": 30720.0, "host_total_mb": 64000.0}

    flags = diagnose(plant(tmp_path / "full", memory=full))
    assert codes(flags) == ["host_memory_near_capacity"]
    assert "host n1 memory at 96% of 64000 MB" in flags[0].message and "ranks 0, 1" in \
        flags[0].message

    def old_file(e, rank):  # written before host_total_mb: nothing to compare against
        return {**full(e, rank), "host_total_mb": None}

    assert codes(diagnose(plant(tmp_path / "old", memory=old_file))) == []


def test_a_file_without_the_host_total_column_is_still_read(tmp_path):
    run = plant(tmp_path / "old")
    path = run / "train" / rundir.GPU_MEMORY
    old_columns = rundir.MEMORY_COLUMNS[:-1]
    rows = [[r.get(c) for c in old_columns] for r in rundir.read_rows(path)]
    rundir.write_csv(path, old_columns, rows)
    assert codes(diagnose(run)) == []


def test_gpu_memory_near_capacity_names_the_rank(tmp_path):
    def busy(e, rank):
        return {**healthy_memory(e, rank), "device_used_mb": 79000.0 if rank else 1000.0}

    flags = diagnose(plant(tmp_path / "busy", memory=busy))
    assert codes(flags) == ["memory_near_capacity"] and flags[0].rank == 1


def test_oom_in_the_log(tmp_path):
    run = plant(tmp_path / "oom", status="FAILED", failure={
        "rank": 1, "host": "gpu07", "stage": "train", "epoch": 3,
        "exception": "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "traceback": ["..."]})
    flags = diagnose(run, log_text="torch.OutOfMemoryError: CUDA out of memory.")
    assert codes(flags) == ["failed"]
    assert "rank 1 on gpu07" in flags[0].message and "lower the batch size" in flags[0].message


def test_the_signature_nearest_the_end_of_the_log_wins():
    log = ("RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB\n"
           "...\nslurmstepd: error: *** JOB 41 ON n1 CANCELLED AT 2024-05-01T10:00:00 DUE TO "
           "TIME LIMIT ***\n")
    assert failure_cause(log) == "the scheduler's time limit was reached"
    assert "CUDA out of memory" in failure_cause(log.splitlines()[0])


def test_slurm_oom_kill_wording():
    log = ("slurmstepd: error: Detected 1 oom_kill event in StepId=1234.batch. Some of the "
           "step tasks have been OOM Killed.\n")
    assert failure_cause(log) == "killed by the kernel's OOM killer: host memory ran out"


def test_nccl_info_lines_are_not_a_cause_but_its_errors_are():
    chatter = ("n1:101:101 [0] NCCL INFO Bootstrap : Using eth0:10.0.0.1<0>\n"
               "n1:101:101 [0] NCCL INFO NET/Plugin: No plugin found (libnccl-net.so)\n"
               "[rank0]:[I ProcessGroupNCCL.cpp:852] [PG 0 Rank 0] ProcessGroupNCCL "
               "initialization options: TORCH_NCCL_ASYNC_ERROR_HANDLING: 1, TIMEOUT(ms): 600000\n")
    assert failure_cause(chatter) is None
    for line in ("torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, "
                 "unhandled system error",
                 "[rank1]:[E1015 12:00:00.000000 ProcessGroupNCCL.cpp:616] [Rank 1] Watchdog "
                 "caught collective operation timeout: WorkNCCL(SeqNum=5, OpType=ALLREDUCE)",
                 "[E ProcessGroupNCCL.cpp:475] Some NCCL operations have failed or timed out."):
        assert failure_cause(chatter + line + "\n").startswith("NCCL error or timeout"), line


def test_failure_json_exception_text_is_searched(tmp_path):
    run = plant(tmp_path / "disk", status="FAILED", failure={
        "rank": 0, "host": "n1", "stage": "train", "epoch": 2,
        "exception": "OSError: [Errno 28] No space left on device", "traceback": "not a list"})
    flags = diagnose(run)
    assert codes(flags) == ["failed"] and "the disk of the run directory is full" in \
        flags[0].message and flags[0].epoch == 2


def test_checks_kept_between_refreshes_agree_with_a_whole_read(tmp_path):
    """What ``monitor`` does (one Diagnosis, rows arriving) and what ``fetch`` does (a fresh
    read) find the same flags, also after a resume rewrote the CSVs."""
    run = plant(tmp_path / "live", epochs=3, status="RUNNING")
    live = Diagnosis(run)
    assert live.flags() == []
    with open(run / "train" / rundir.GRADIENT_STATS, "a") as handle:
        handle.write("4,10,60.0,0.1,30.0,90.0,60.0,0.0,0\n")
    live.tables.refresh()
    assert codes(live.flags()) == codes(diagnose(run)) == ["exploding_gradients"]
    rundir.truncate_epochs(run / "train" / rundir.GRADIENT_STATS, 3)  # a resume from epoch 3
    live.tables.refresh()
    assert live.flags() == diagnose(run) == []



# --- each flag's wording and thresholds, and the pieces the checks are built from ----------

import pytest  # noqa: E402

from hpcrun.diagnose import ADVICE, SIGNATURES, Flag, RunningMedian, failed_flag, log_tail  # noqa: E402,I001


def test_the_log_tail_is_its_last_200_lines():
    tail = log_tail("\n".join(str(i) for i in range(300)))
    assert tail.splitlines() == [str(i) for i in range(100, 300)]


@pytest.mark.parametrize("line, meaning", [
    ("torch.OutOfMemoryError: boom", "CUDA out of memory: lower the batch size or enable AMP"),
    ("RuntimeError: NCCL timeout on rank 3", "NCCL error or timeout: a rank stalled or the "
     "network failed"),
    ("[  123.4] Out of memory: Killed process 42 (python)", "killed by the kernel's OOM "
     "killer: host memory ran out"),
    ("slurmstepd: error: Exceeded job memory limit", "killed by the kernel's OOM killer: host "
     "memory ran out"),
    ("*** JOB 7 ON n1 CANCELLED AT 2024 DUE TO PREEMPTION ***", "preempted by the scheduler"),
    ("torchrun: Signal 9 (SIGKILL) received by PID 5", "a process was killed with SIGKILL"),
    ("OSError: File too large", "a file-size limit (ulimit -f) was reached"),
    ("OSError: [Errno 30] Read-only file system: 'x'", "the run directory is on a read-only "
     "filesystem"),
])
def test_each_failure_signature_names_its_cause(line, meaning):
    assert failure_cause(f"step 1\n{line}\nexiting\n") == meaning
    assert meaning in {m for _, m in SIGNATURES}


def test_running_median_of_odd_even_and_no_values():
    median = RunningMedian()
    assert math.isnan(median.median()) and len(median) == 0
    for value in (5.0, 1.0, 3.0):
        median.add(value)
    assert median.median() == 3.0 and len(median) == 3
    median.add(10.0)
    assert median.median() == 4.0


def test_a_flag_carries_its_advice():
    flag = Flag("nan_loss", "m", "train", 3, 1)
    assert flag.advice == ADVICE["nan_loss"]
    assert flag.to_dict() == {"code": "nan_loss", "message": "m", "stage": "train", "epoch": 3,
                              "rank": 1, "advice": ADVICE["nan_loss"]}
    assert Flag("new_flag", "m").advice == "see docs/red-flags.md"


def test_vanishing_gradients(tmp_path):
    flags = diagnose(plant(tmp_path / "tiny", grads=lambda e: 1e-9))
    assert codes(flags) == ["vanishing_gradients"]
    assert flags[0].message == "mean gradient norm 1.00e-09 < 1e-07 in epoch 8"
    assert flags[0].epoch == 8
    # zero is under the threshold too; a norm that is not a number is not
    assert codes(diagnose(plant(tmp_path / "zero", grads=lambda e: 0.0))) == [
        "vanishing_gradients"]
    assert codes(diagnose(plant(tmp_path / "nan", grads=lambda e: 0.5 if e < 8 else math.nan)
                          )) == []


def test_non_finite_steps_are_flagged_at_their_first_epoch(tmp_path):
    run = plant(tmp_path / "steps")
    with open(run / "train" / rundir.GRADIENT_STATS, "a") as handle:
        handle.write("9,10,0.5,0.1,0.2,0.9,0.5,0.0,3\n10,10,0.5,0.1,0.2,0.9,0.5,0.0,1\n")
    flags = diagnose(run)
    assert codes(flags) == ["nonfinite_gradients"] and flags[0].epoch == 9
    assert flags[0].message == "non-finite gradient norms in epoch 9"


def test_exploding_gradients_over_the_absolute_limit(tmp_path):
    flags = diagnose(plant(tmp_path / "max", grads=lambda e: 1000.0 if e == 1 else 0.5))
    # norm_max is 1.5x the mean: 1500 > 1000 from the first epoch on
    assert codes(flags) == ["exploding_gradients"] and flags[0].epoch == 1
    assert flags[0].message == "gradients exploding in epoch 1: max norm 1.5e+03 > 1000"


def test_separation_that_stalled_low(tmp_path):
    flags = diagnose(plant(tmp_path / "flat", epochs=8, separation=lambda e: 0.1))
    assert codes(flags) == ["separation_stalled"] and flags[0].epoch == 8
    assert flags[0].message == ("validation separation has not improved for 5 epochs "
                                "(best 0.100)")
    # still improving, or stalled above separation_min: no flag
    assert codes(diagnose(plant(tmp_path / "up", separation=lambda e: 0.01 * e))) == []
    assert codes(diagnose(plant(tmp_path / "high", separation=lambda e: 0.3))) == []
    # as many epochs as the patience: too early to tell
    assert codes(diagnose(plant(tmp_path / "short", epochs=5, separation=lambda e: 0.1))) == []


def test_a_model_without_a_classification_loss_has_no_separation_flags(tmp_path):
    run = plant(tmp_path / "recon", separation=lambda e: 0.1)
    rundir.write_csv(run / "train" / rundir.LOSS_COMPONENTS,
                     ["epoch", "phase", "reconstruction", "total"], [[1, "train", 0.5, 0.5]])
    assert codes(diagnose(run)) == []


def test_diverging_validation_loss(tmp_path):
    run = plant(tmp_path / "div", epochs=8)
    path = run / "train" / rundir.TRAINING
    rows = rundir.read_rows(path)
    for i, row in enumerate(rows):  # validation rises from epoch 3 on, training keeps falling
        row["Val Loss"] = str(0.5 + 0.1 * max(0, i - 2))
    rundir.write_csv(path, list(rows[0]), [list(r.values()) for r in rows])
    flags = diagnose(run)
    assert codes(flags) == ["diverging"] and flags[0].epoch == 8
    assert flags[0].message == ("validation loss rose for 5 epochs while training loss fell "
                                "(overfitting?)")
    # a validation loss that rose for only four of the last five epochs is no divergence
    rows[4]["Val Loss"] = "0.1"
    rundir.write_csv(path, list(rows[0]), [list(r.values()) for r in rows])
    assert codes(diagnose(run)) == []


def test_nan_loss_names_the_column_and_epoch(tmp_path):
    run = plant(tmp_path / "nan", train=lambda e: math.inf if e >= 3 else 0.6 / e)
    flags = diagnose(run)
    assert codes(flags) == ["nan_loss"]
    assert (flags[0].message, flags[0].stage, flags[0].epoch) == (
        "Train Loss is not finite from epoch 3", "train", 3)


def test_the_failed_flag_without_a_failure_record(tmp_path):
    run = plant(tmp_path / "f", status="FAILED")
    assert failed_flag(run) == Flag("failed", "the job failed", "train", None)
    rundir.write_json(run / rundir.STATUS, {"state": "FAILED", "stage": "train",
                                            "message": "exit 3"})
    assert failed_flag(run).message == "exit 3"
    flag = failed_flag(run, log_text="x\nslurmstepd: DUE TO TIME LIMIT\n")
    assert flag.message == "the scheduler's time limit was reached"
    rundir.write_json(run / rundir.FAILURE, {"rank": 2, "host": "n3", "exception": "E: x",
                                             "stage": "other", "epoch": 4,
                                             "traceback": ["No space left on device"]})
    flag = failed_flag(run)
    assert flag == Flag("failed", "rank 2 on n3: E: x; the disk of the run directory is full",
                        "other", 4)


def test_stalled_uses_the_given_state_and_clock(tmp_path):
    now = time.time()
    run = plant(tmp_path / "s", status="SUCCEEDED", updated_at=now - 100)
    assert codes(diagnose(run, now=now)) == []
    flags = diagnose(run, job_state="RUNNING", now=now)
    assert codes(flags) == ["stalled"] and flags[0].epoch == 8 and flags[0].stage == "train"
    assert flags[0].message == ("no heartbeat for 100 s (over 60 s: 5x the median epoch time, "
                                "at least 60 s)")
    assert codes(diagnose(run, job_state="RUNNING", now=now - 50)) == []


def test_epoch_time_is_the_median_and_the_limits_follow_the_config(tmp_path):
    run = plant(tmp_path / "t", epochs=3)
    diagnosis = Diagnosis(run)
    assert diagnosis.epoch_time("train") == 1.0
    assert diagnosis.epoch_time("nothing") is None
    first = diagnosis.limits()
    assert first.stall_min_s == 60.0 and diagnosis.limits() is first  # read once
    text = (run / rundir.CONFIG).read_text()
    (run / rundir.CONFIG).write_text(text.replace("stall_min_s: 60.0", "stall_min_s: 7.0"))
    assert diagnosis.limits().stall_min_s == 7.0
    (run / rundir.CONFIG).write_text("not: [valid")
    assert diagnosis.limits().stall_min_s == 60.0  # the defaults


def system_rows(root: Path, samples: list[tuple[str, float, list[float | None]]]) -> None:
    """system.csv: per (host, time) sample one row per GPU (an empty cell: no GPU)."""
    lines = [",".join(rundir.SYSTEM_COLUMNS)]
    for host, when, utils in samples:
        for gpu, util in enumerate(utils):
            cells = {"time": when, "host": host, "gpu": gpu,
                     "gpu_util_pct": "" if util is None else util}
            lines.append(",".join(str(cells.get(c, "")) for c in rundir.SYSTEM_COLUMNS))
    rundir.write_atomic(root / rundir.SYSTEM, ("\n".join(lines) + "\n").encode())


def idle(run: Path, **kwargs) -> list[Flag]:
    return [f for f in diagnose(run, **kwargs) if f.code == "gpu_idle"]


def test_gpu_idle_names_each_host_and_its_longest_idle_stretch(tmp_path):
    run = tmp_path / "run"
    system_rows(run, [
        # a: idle 0..100, busy, idle 200..600 (the longest: 400 s), still idle at the end
        ("a", 0, [10, 10]), ("a", 100, [10, 0]), ("a", 150, [10, 80]),
        ("a", 200, [0, 0]), ("a", 400, [29, 29]), ("a", 600, [0, 0]),
        # b: idle 0..500, then busy: 500 s, ended
        ("b", 0, [0]), ("b", 500, [0]), ("b", 550, [30]),
        # c: idle for exactly the limit (300 s): not over it
        ("c", 0, [0]), ("c", 300, [0]),
        # d: no GPU (empty cells), and a row without a time
        ("d", 0, [None]), ("d", 900, [None]), ("", math.nan, [0]),
    ])
    flags = idle(run)
    assert [f.message for f in flags] == [
        "the GPUs of a sat below 30% utilisation for 400 s (over 300 s) while the job ran",
        "the GPUs of b sat below 30% utilisation for 500 s (over 300 s) while the job ran"]
    assert flags[0].stage is None and flags[0].epoch is None


def test_gpu_idle_keeps_the_longest_stretch_and_counts_the_open_one(tmp_path):
    run = tmp_path / "run"
    # a long stretch first (0..400), busy, then a shorter open one (500..700)
    system_rows(run, [("h", 0, [0]), ("h", 400, [0]), ("h", 450, [90]), ("h", 500, [0]),
                      ("h", 700, [0])])
    assert [f.message.split(" for ")[1] for f in idle(run)] == [
        "400 s (over 300 s) while the job ran"]
    # the open stretch grows longer than the closed one
    system_rows(run, [("h", 0, [0]), ("h", 400, [0]), ("h", 450, [90]), ("h", 500, [0]),
                      ("h", 1000, [0])])
    assert [f.message.split(" for ")[1] for f in idle(run)] == [
        "500 s (over 300 s) while the job ran"]
    # one sample in the open stretch only: no stretch at all
    system_rows(run, [("h", 0, [90]), ("h", 500, [0])])
    assert idle(run) == []


def test_gpu_idle_starts_again_on_a_rewrite_or_new_limits(tmp_path):
    run = tmp_path / "run"
    system_rows(run, [("h", 0, [0]), ("h", 400, [0])])
    diagnosis = Diagnosis(run)
    assert len([f for f in diagnosis.flags() if f.code == "gpu_idle"]) == 1
    # a new file (written beside the old one, then renamed over it): what was seen of the
    # old one is forgotten
    system_rows(run, [("h", 0, [90]), ("h", 400, [90])])
    diagnosis.tables.refresh()
    assert [f for f in diagnosis.flags() if f.code == "gpu_idle"] == []
    (run / rundir.CONFIG).write_text("experiment: x\nmonitor: {gpu_idle_pct: 95}\n")
    assert len([f for f in diagnosis.flags() if f.code == "gpu_idle"]) == 1
