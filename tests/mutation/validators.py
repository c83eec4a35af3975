"""Mutation score of config.py's pydantic validators, with cosmic-ray.

mutmut (``make mutation``) leaves decorated functions alone, so it never mutates the
``field_validator`` and ``model_validator`` methods of config.py. cosmic-ray mutates the syntax
tree wherever it is: this script lets it mutate config.py, keeps the mutants whose change lies
inside the body of a validator (its decorators and ``def`` line left out), and runs TESTS
against each one. A mutant is killed when a test fails or runs past the timeout.

The project is copied into ./mutants-validators (one copy per worker: cosmic-ray writes each
mutant into the file on disk, and puts the original back afterwards), so the checkout is never
mutated. The session (a SQLite file, readable with ``cr-report``) stays there.

    python tests/mutation/validators.py [--jobs N] [--survivors]
    python tests/mutation/validators.py --report [--survivors]   # the last run's results again
"""

from __future__ import annotations

import argparse
import ast
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "mutants-validators"
MODULE = Path("src/hpcrun/config.py")
SESSION = WORK / "session.sqlite"
CONFIG = WORK / "cosmic-ray.toml"
BIN = Path(sys.executable).parent
#: what a worker's copy needs to import hpcrun and run the tests (hpcrun.resources finds the
#: configs, templates and launchers at the root of a source checkout)
COPY = ["src", "tests", "configs", "templates", "launchers", "pyproject.toml"]
#: the tests that load configs: the config tests, hostile names and values in configs, and the
#: remotes' checks; 2-3 s when all pass, less when one fails (-x)
TESTS = [
    "tests/unit/test_config.py",
    "tests/unit/test_config_validators.py",
    "tests/unit/test_hostile_names.py",
    "tests/unit/test_security.py::test_remotes_cannot_turn_host_key_checking_off",
    "tests/unit/test_security.py::test_a_remote_forwards_environment_variables_by_name",
]
TIMEOUT_S = 60

#: surviving mutants that cannot change what a validator does, by their key (the validator,
#: then the line before and after the change), with the reason
EQUIVALENT: dict[str, str] = {
    'DataConfig._consistent: if self.source == "files" and not self.path: -> '
    'if self.source <= "files" and not self.path:':
        "the source is 'synthetic' or 'files' (a Literal), and only 'files' is <= 'files'",
    'DataConfig._consistent: if self.source == "files" and not self.path: -> '
    'if self.source is "files" and not self.path:':
        "pydantic gives a Literal field the Literal's own string, the same object as the "
        "constant in the check",
    'SchedulerConfig._consistent: if self.type == "plateau" and self.warmup_epochs: -> '
    'if self.type is "plateau" and self.warmup_epochs:':
        "pydantic gives a Literal field the Literal's own string, the same object as the "
        "constant in the check",
    'DistributedConfig._bool_words: return value.lower() == "true" -> '
    'return value.lower() >= "true"':
        "only 'true' and 'false' get there, and 'false' < 'true'",
    'ExperimentConfig._pipeline_order: if stage.mode == "eval_only" and ref is None: -> '
    'if stage.mode <= "eval_only" and ref is None:':
        "the mode is one of RUN_MODES (its own validator), and only 'eval_only' is "
        "<= 'eval_only'",
    "LossConfig._consistent: if not any(w > 0 for w in self.components.values()): -> "
    "if not any(w != 0 for w in self.components.values()):":
        "weights are >= 0 (NaN refused), and -0.0 != 0 is False like -0.0 > 0",
}


def validators(path: Path) -> dict[str, tuple[int, int]]:
    """``Class.method`` -> (first, last) line of the body of every pydantic validator in the
    module: its decorators and its ``def`` line are left out (the annotations there are never
    evaluated, ``from __future__ import annotations``; pydantic makes a validator a classmethod
    whether or not it is decorated as one)."""
    found = {}
    for cls in ast.parse(path.read_text()).body:
        if not isinstance(cls, ast.ClassDef):
            continue
        for node in cls.body:
            if not isinstance(node, ast.FunctionDef):
                continue
            names = {d.func.id for d in node.decorator_list
                     if isinstance(d, ast.Call) and isinstance(d.func, ast.Name)}
            if names & {"field_validator", "model_validator"}:
                found[f"{cls.name}.{node.name}"] = (node.body[0].lineno, node.end_lineno)
    return found


def test_command() -> str:
    tests = " ".join(TESTS)
    return (f"{sys.executable} -m pytest -x -q -p no:cacheprovider "
            f"-m 'not slow' {tests}")


def prepare(jobs: int) -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    for index in range(jobs):
        copy = WORK / f"w{index}"
        copy.mkdir(parents=True)
        for name in COPY:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, copy / name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, copy / name)
    ranges = validators(ROOT / MODULE)
    lines = ", ".join(f'"{first}-{last}"' for first, last in ranges.values())
    CONFIG.write_text(
        "[cosmic-ray]\n"
        f'module-path = "{MODULE}"\n'
        f"timeout = {TIMEOUT_S}\n"
        "excluded-modules = []\n"
        f'test-command = "{test_command()}"\n'
        '[cosmic-ray.distributor]\nname = "local"\n'
        f'[cosmic-ray.filters.line-filter.lines]\n"{MODULE}" = [{lines}]\n'
    )
    first = WORK / "w0"
    subprocess.run([BIN / "cosmic-ray", "init", CONFIG, SESSION], cwd=first, check=True)
    subprocess.run([BIN / "cr-filter-lines", "--config", CONFIG, SESSION], cwd=first,
                   check=True)


def _start(indices) -> None:
    """A worker takes one copy of the project for all its mutants."""
    copy = WORK / f"w{indices.get()}"
    os.chdir(copy)
    os.environ["PYTHONPATH"] = str(copy / "src")


def _run(item: tuple[str, list]) -> tuple[str, object]:
    from cosmic_ray.mutating import mutate_and_test

    job_id, mutations = item
    return job_id, mutate_and_test(mutations, test_command(), TIMEOUT_S)


def baseline(jobs: int) -> None:
    """The tests pass on every unmutated copy (else every mutant would count as killed)."""
    for index in range(jobs):
        copy = WORK / f"w{index}"
        env = dict(os.environ, PYTHONPATH=str(copy / "src"))
        done = subprocess.run(test_command(), shell=True, cwd=copy, env=env,
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"the tests fail without a mutant:\n{done.stdout[-3000:]}")


def execute(jobs: int) -> None:
    from cosmic_ray.work_db import WorkDB, use_db

    with use_db(str(SESSION), WorkDB.Mode.open) as db:
        pending = [(item.job_id, item.mutations) for item in db.pending_work_items]
    print(f"{len(pending)} mutants inside the validators, {jobs} worker(s)", flush=True)
    indices = multiprocessing.Queue()
    for index in range(jobs):
        indices.put(index)
    with multiprocessing.Pool(jobs, _start, (indices,)) as pool, \
            use_db(str(SESSION), WorkDB.Mode.open) as db:
        for done, (job_id, result) in enumerate(pool.imap_unordered(_run, pending), 1):
            db.set_result(job_id, result)
            if done % 50 == 0:
                print(f"  {done} / {len(pending)}", flush=True)


def key(name: str, diff: str) -> str:
    removed = " / ".join(line[1:].strip() for line in diff.splitlines()
                         if line.startswith("-") and not line.startswith("---"))
    added = " / ".join(line[1:].strip() for line in diff.splitlines()
                       if line.startswith("+") and not line.startswith("+++"))
    return f"{name}: {removed} -> {added}"


def report(show: bool) -> int:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    ranges = validators(WORK / "w0" / MODULE)

    def owner(start: int, end: int) -> str | None:
        return next((name for name, (first, last) in ranges.items()
                     if start <= last and first <= end), None)

    counts = {"killed": 0, "survived": 0, "incompetent": 0, "equivalent": 0}
    survivors = []
    with use_db(str(SESSION), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            mutation = item.mutations[0]
            name = owner(mutation.start_pos[0], mutation.end_pos[0])
            if result.worker_outcome == WorkerOutcome.SKIPPED or name is None:
                continue
            if result.worker_outcome != WorkerOutcome.NORMAL:
                counts["incompetent"] += 1
                continue
            if result.test_outcome == TestOutcome.SURVIVED:
                counts["survived"] += 1
                name = key(name, result.diff or "")
                if name in EQUIVALENT:
                    counts["equivalent"] += 1
                survivors.append((name, item.mutations[0].operator_name))
            else:
                counts["killed"] += 1
        pending = db.num_work_items - db.num_results
    total = counts["killed"] + counts["survived"] + counts["incompetent"]
    if not total:
        print("not measured")
        return 1
    killed = counts["killed"]
    rest = total - counts["equivalent"]
    print(f"config.py validators ({len(ranges)}): {killed} / {total} killed "
          f"({100 * killed / total:.1f} %); without {counts['equivalent']} equivalent: "
          f"{killed} / {rest} ({100 * killed / rest:.1f} %); {counts['incompetent']} "
          f"incompetent, {pending} not run")
    if show:
        for name, operator in sorted(survivors):
            print(f"    {operator:<45} {name}  {EQUIVALENT.get(name, '')}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--survivors", action="store_true")
    parser.add_argument("--report", action="store_true", help="only print the last results")
    args = parser.parse_args(argv)
    if not args.report:
        prepare(args.jobs)
        baseline(args.jobs)
        execute(args.jobs)
    return report(args.survivors)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
