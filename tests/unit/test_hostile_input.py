"""Hostile input through the real command line, in-process: generated configs and ``--set``
values, YAML bombs, and what rendering does with values meant to break out of a shell line.

The CLI is driven through ``hpcrun.cli.main`` exactly as the console script calls it, so the
global ``--json`` handling and the one-line usage errors are the real ones. Every answer must
be exit 0 or 2, with no traceback; a refusal is one line on stderr.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Answer, invoke
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hpcrun.config import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    MAX_CONFIG_NODES,
    ExperimentConfig,
)

#: values meant to run a command if they ever reach a shell line unquoted
PAYLOADS = (
    "$(touch PWNED)", "`touch PWNED`", "; touch PWNED", "'; touch PWNED; '", '"; touch PWNED; "',
    "\ntouch PWNED\n", "${IFS}touch${IFS}PWNED", "a\rtouch PWNED", "|| touch PWNED #",
    "&& touch PWNED", "$((1+1))", "\\", "'", '"', "-rf", "--wrap=touch PWNED", "#SBATCH --x",
    "{{ 7 * 7 }}", "{% raw %}", "../../etc/passwd", "/etc/passwd", "~root", "*", "\x00",
    "\ud800", "\udcff", "\u202e", "\x1b[31m", " ", "",
)


def assert_clean(answer: Answer, argv: tuple[str, ...]) -> None:
    """Exit 0, or exit 2 with one ``hpcrun: error:`` line; never a traceback."""
    where = f"{argv!r}: exit {answer.code}\nstderr: {answer.err[-3000:]}"
    assert answer.code in (0, 2), where
    assert "Traceback" not in answer.out + answer.err, where
    if answer.code == 2:
        lines = answer.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("hpcrun: error: "), where


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A project directory as the cwd, with the job store and bundle cache isolated. PATH is
    empty: no git to ask (the bundle is then every file), no scheduler to find."""
    root = tmp_path_factory.mktemp("hostile")
    project = root / "project"
    (project / "configs").mkdir(parents=True)
    (root / "bin").mkdir()
    (project / "train.py").write_text("print('hi')\n")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"XDG_STATE_HOME": str(root / "state"),
                           "XDG_CACHE_HOME": str(root / "cache"), "NO_COLOR": "1",
                           "COLUMNS": "200", "RUNPOD_HOST": "127.0.0.1",
                           "RUNPOD_WORKDIR": str(root / "pod"), "PATH": str(root / "bin")
                           }.items():
            patch.setenv(key, value)
        patch.chdir(project)
        yield project


# --------------------------------------------------------------------------- generators


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix, node


#: every dotted key of the schema with its default value
DEFAULTS = dict(_leaves(ExperimentConfig(experiment="x").model_dump(mode="json")))
KEYS = sorted(DEFAULTS) + ["pipeline.0.name", "pipeline.0.mode", "pipeline.0.init_from",
                           "pipeline.0.overrides", "pipeline.1.mode", "extends",
                           "resources.slurm.directives", "sweep.training.lr"]

text = st.one_of(st.sampled_from(PAYLOADS), st.text(max_size=24),
                 st.text(st.characters(blacklist_categories=()), max_size=8))
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-3, 300),
                   st.floats(allow_nan=True, allow_infinity=True), text,
                   st.sampled_from(["auto", "mlp", "v3", "true", "16G", "01:00:00", "gloo"]))
value = st.recursive(scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), text), inner, max_size=4)),
    max_leaves=8)


def typed_like(default: Any) -> st.SearchStrategy[Any]:
    """A value of the default's type: often valid, and for free-text keys (paths, column
    names, shell-bound strings) the payloads above."""
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.one_of(st.just(default), st.integers(0, 64), st.integers())
    if isinstance(default, float):
        return st.one_of(st.just(default), st.floats(0, 1), st.floats())
    if isinstance(default, str):
        return st.one_of(st.just(default), text)
    if isinstance(default, list):
        item = typed_like(default[0]) if default else text
        return st.one_of(st.just(default), st.lists(item, max_size=3))
    if default is None:
        return st.one_of(st.none(), text, st.integers(1, 8))
    return st.just(default)


def _plausible(default: Any) -> st.SearchStrategy[Any]:
    """Mostly a value of the right type (so that a config often validates and gets rendered),
    else anything."""
    return st.one_of(*[typed_like(default)] * 6, value)


def _put(doc: dict[Any, Any], dotted: str, item: Any) -> None:
    *parents, last = dotted.split(".")
    node = doc
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[last] = item


@st.composite
def config_documents(draw: st.DrawFn) -> str:
    """A YAML document: the experiment's real keys with random-typed values, junk keys and
    sometimes plain junk text."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(st.text(max_size=200), st.sampled_from(
            ["[", "a: b: c", "\t- x", "!!python/object:os.system ['touch PWNED']",
             "experiment: &a [*a]", "? [a, b]\n: 1", "experiment: !!binary 'AAAA'", "---\n---",
             "%YAML 9.9\n---\na: 1", "a: *nope", "experiment: x\nexperiment: y"])))
    doc: dict[Any, Any] = {"experiment": draw(st.sampled_from(["fz", "fz", "fz", "fz", "-x"]))}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=6, unique=True)):
        _put(doc, key, draw(_plausible(DEFAULTS.get(key))))
    if draw(st.booleans()):
        two = [{"name": "a"}, {"name": "b", "mode": "eval_only", "init_from": "a"}]
        doc["pipeline"] = draw(st.one_of(
            st.just(two), st.just(two), st.just([{"name": draw(text)}]),
            st.lists(st.dictionaries(st.sampled_from(["name", "mode", "init_from", "overrides",
                                                      "eval_splits"]), value, max_size=3),
                     max_size=3), value))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        doc[draw(st.one_of(text, st.integers()))] = draw(value)
    return yaml.safe_dump(doc, allow_unicode=draw(st.booleans()))


def _flow(item: Any) -> str:
    """``item`` as a one-line YAML value, as a user would type it after ``--set KEY=``."""
    return yaml.safe_dump(item, default_flow_style=True).strip().removesuffix("...").strip()


set_keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(["", ".", "a..b", "pipeline.9.mode",
                                                             "training.lr.x", "seed.0"]), text)
set_values = st.one_of(value.map(_flow), text)
set_typed = st.sampled_from(KEYS).flatmap(
    lambda key: _plausible(DEFAULTS.get(key)).map(lambda v: f"{key}={_flow(v)}"))
set_expressions = st.one_of(set_typed, set_typed, set_typed, set_typed,
                            st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), text),
                            st.builds(lambda k, v: f"{k}={v}", set_keys, set_values), text)
sweep_expressions = st.builds(
    lambda key, values: f"{key}={','.join(values)}",
    st.one_of(st.sampled_from(["training.lr", "data.label_column", "runs_dir", "model.dropout",
                               "resources.partition", "model.options.tag"]), set_keys),
    st.lists(st.one_of(text, st.sampled_from(["0.1", "0.01", "x"])), min_size=1, max_size=3))
backends = st.sampled_from(["local", "slurm", "pbs", "pod", "nope"])


def fuzz(examples: int) -> settings:
    """Hypothesis settings for a CLI fuzzer; HPCRUN_FUZZ_EXAMPLES overrides the count."""
    return settings(max_examples=int(os.environ.get("HPCRUN_FUZZ_EXAMPLES", examples)),
                    deadline=None, database=None, suppress_health_check=list(HealthCheck))


def _show_and_submit(sets: list[str], sweeps: list[str], backend: str, as_json: bool) -> None:
    json_flag = ("--json",) if as_json else ()
    options = tuple(a for s in sets for a in ("--set", s))
    show = (*json_flag, "config", "show", "fz", *options)
    shown = invoke(*show)
    assert_clean(shown, show)
    event(f"config show: exit {shown.code}")
    if shown.code != 0 and not sweeps:
        return  # an invalid config is refused before submit ever renders it
    remote = ("--remote", "runpod") if backend == "pod" else ()
    submit = (*json_flag, "submit", "fz", "--dry-run", "--backend", backend, *remote, *options,
              *(a for s in sweeps for a in ("--sweep", s)))
    submitted = invoke(*submit)
    assert_clean(submitted, submit)
    event(f"submit --dry-run --backend {backend}: exit {submitted.code}")


@pytest.mark.slow
@fuzz(1500)
@given(document=config_documents(), backend=backends, as_json=st.booleans())
def test_generated_configs_never_crash_the_cli(project: Path, document: str, backend: str,
                                               as_json: bool) -> None:
    (project / "configs" / "fz.yaml").write_text(document, encoding="utf-8",
                                                 errors="surrogatepass")
    _show_and_submit([], [], backend, as_json)


@pytest.mark.slow
@fuzz(1200)
@given(sets=st.lists(set_expressions, min_size=1, max_size=2),
       sweeps=st.lists(sweep_expressions, max_size=1),
       backend=backends, as_json=st.booleans())
def test_generated_set_and_sweep_values_never_crash_the_cli(project: Path, sets: list[str],
                                                            sweeps: list[str], backend: str,
                                                            as_json: bool) -> None:
    (project / "configs" / "fz.yaml").write_text("extends: v3\nexperiment: fz\n")
    _show_and_submit(sets, sweeps, backend, as_json)


# --------------------------------------------------------------------------- found by the fuzzers


@pytest.mark.parametrize(("setting", "expected"), [
    ('runs_dir="a\\0b"', "runs_dir: holds a NUL byte"),
    ("runs_dir=r\udcff", "runs_dir: holds text that is not valid UTF-8"),  # argv byte 0xff
    ('model.options={"\\0": 1}', "holds a NUL byte"),
    ("model.options=" + "[" * 3000 + "]" * 3000, "nested deeper than 40 levels"),
    ("sweep={training.lr: []}", "sweep.training.lr: List should have at least 1 item"),
])
def test_values_no_job_could_use_are_one_line_errors(project: Path, setting: str,
                                                     expected: str) -> None:
    (project / "configs" / "fz.yaml").write_text("extends: v3\nexperiment: fz\n")
    for argv in (("config", "show", "fz", "--set", setting),
                 ("submit", "fz", "--dry-run", "--backend", "slurm", "--set", setting)):
        answer = invoke(*argv)
        assert_clean(answer, argv)
        assert answer.code == 2 and expected in answer.err, answer.err


def test_keys_and_names_with_control_characters_are_shown_escaped(project: Path) -> None:
    (project / "configs" / "fz.yaml").write_text(
        'experiment: fz\n"\\ntouch PWNED\\e[31m": 1\nextends: "nowhere/\\nx"\n')
    answer = invoke("config", "show", "fz")
    assert_clean(answer, ("config", "show", "fz"))
    assert "nowhere/\\nx" in answer.err and "\x1b" not in answer.err
    (project / "configs" / "fz.yaml").write_text('experiment: fz\n"\\ntouch PWNED\\e[31m": 1\n')
    answer = invoke("config", "show", "fz")
    assert_clean(answer, ("config", "show", "fz"))
    assert "\\ntouch PWNED\\x1b[31m: unknown key" in answer.err


# --------------------------------------------------------------------------- YAML bombs


def _shown(*argv: str) -> float:
    """Seconds ``hpcrun ARGV`` took here (the best of two)."""
    best = float("inf")
    for _ in range(2):
        started = time.monotonic()
        invoke(*argv)
        best = min(best, time.monotonic() - started)
    return best


#: a bomb is refused at the cost of reading a few ordinary configs, measured in the same run
#: (expanded, one of them takes minutes and gigabytes)
BOMB_COST = 10


def _refused(argv: tuple[str, ...], expected: str) -> float:
    """Seconds ``hpcrun ARGV`` took to refuse with ``expected``: the best of three, as the
    baseline is a best of two, since one stall of a busy machine is not what a refusal costs."""
    best = float("inf")
    for _ in range(3):
        started = time.monotonic()
        answer = invoke(*argv)
        best = min(best, time.monotonic() - started)
        assert_clean(answer, argv)
        assert answer.code == 2 and expected in answer.err, answer.err
    return best


def _refused_quickly(project: Path, text: str, expected: str) -> float:
    baseline = _shown("config", "show", "v3")
    (project / "configs" / "bomb.yaml").write_text(text)
    elapsed = _refused(("config", "show", "bomb"), expected)
    assert elapsed < BOMB_COST * baseline, f"{elapsed:.2f} s to refuse, {baseline:.2f} s to read v3"
    return elapsed


def _laughs(levels: int, width: int, collection: str) -> list[str]:
    """Billion laughs: each anchor repeats the one before ``width`` times."""
    if collection == "list":
        lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
        lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]"
                  for i in range(1, levels)]
    else:
        lines = [f"l0: &l0 {{{', '.join(f'k{j}: lol' for j in range(width))}}}"]
        lines += [f"l{i}: &l{i} {{{', '.join(f'k{j}: *l{i - 1}' for j in range(width))}}}"
                  for i in range(1, levels)]
    return lines


@pytest.mark.parametrize("collection", ["list", "mapping"])
def test_billion_laughs_is_refused_in_the_model_options(project: Path, collection: str) -> None:
    """The bomb sits where any value is allowed (model.options), so only the cap stops it."""
    lines = _laughs(9, 10, collection)
    text = "experiment: bomb\nmodel:\n  options:\n" + "".join(f"    {line}\n" for line in lines)
    _refused_quickly(project, text, f"more than {MAX_CONFIG_NODES} values (after expanding")


def test_merge_key_bomb_is_refused_before_it_is_built(project: Path) -> None:
    """``<<: [*a, *a, ...]`` copies keys while the document is built: without the event
    check, eight levels take minutes before any size check could run."""
    lines = ["m0: &m0 {" + ", ".join(f"k{i}: x" for i in range(10)) + "}"]
    lines += [f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 10)}]}}" for i in range(1, 9)]
    text = "experiment: bomb\nmodel:\n  options:\n" + "".join(f"    {line}\n" for line in lines)
    _refused_quickly(project, text, "after expanding aliases")


def test_recursive_alias_is_refused(project: Path) -> None:
    _refused_quickly(project, "experiment: bomb\nmodel: {options: &a {again: *a}}\n",
                     "refers to a value that contains it")


def test_huge_file_is_refused_by_its_size(project: Path) -> None:
    filler = "# " + "x" * 78 + "\n"
    text = "experiment: bomb\n" + filler * (MAX_CONFIG_BYTES // len(filler) + 1)
    _refused_quickly(project, text, f"is too large for a config (limit {MAX_CONFIG_BYTES})")


def test_many_values_under_the_size_cap_are_refused(project: Path) -> None:
    text = "experiment: bomb\nmodel:\n  options:\n    v: [" + ", ".join(["1"] * 60_000) + "]\n"
    assert len(text) < MAX_CONFIG_BYTES
    _refused_quickly(project, text, f"more than {MAX_CONFIG_NODES} values")


@pytest.mark.parametrize("style", ["block", "flow-mapping"])
def test_deep_nesting_is_refused(project: Path, style: str) -> None:
    if style == "block":
        body = "".join(f"{'  ' * i}k{i}:\n" for i in range(400)) + "  " * 400 + "x: 1\n"
    else:
        body = "k: " + "{a: " * 100_000 + "1" + "}" * 100_000 + "\n"
    _refused_quickly(project, "experiment: bomb\n" + body,
                     f"nested deeper than {MAX_CONFIG_DEPTH} levels")


def test_nesting_up_to_the_cap_is_accepted(project: Path) -> None:
    """model.options sits at depth 2: nested mappings fill it up to the cap and no further."""
    deep = "{a: " * (MAX_CONFIG_DEPTH - 2) + "1" + "}" * (MAX_CONFIG_DEPTH - 2)
    edge = project / "configs" / "edge.yaml"
    edge.write_text(f"experiment: edge\nmodel: {{options: {deep}}}\n")
    assert invoke("config", "show", "edge").code == 0
    edge.write_text(f"experiment: edge\nmodel: {{options: [{deep}]}}\n")
    answer = invoke("config", "show", "edge")
    assert answer.code == 2 and "nested deeper than" in answer.err


def test_deep_flow_nesting_does_not_crash_the_process(project: Path) -> None:
    """400,000 nested brackets overflowed the C composer's stack (a segfault, exit 139)."""
    (project / "configs" / "bomb.yaml").write_text(
        "experiment: bomb\nk: " + "[" * 400_000 + "]" * 400_000 + "\n")
    proc = subprocess.run([str(Path(sys.executable).parent / "hpcrun"), "config", "show",
                           "bomb"], cwd=project, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("hpcrun: error:") and "nested deeper than" in proc.stderr


@pytest.mark.parametrize("value", [
    "{" + ", ".join(f"k{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]"
                    for i in range(1, 9)).replace("*a0", "x") + "}",
    "[" * 5000 + "]" * 5000,
])
def test_bombs_in_a_set_value_are_refused(project: Path, value: str) -> None:
    baseline = _shown("config", "show", "v3")
    argv = ("config", "show", "v3", "--set", f"model.options.x={value}")
    assert _refused(argv, "--set model.options.x") < BOMB_COST * baseline


# --------------------------------------------------------------------------- rendering


def shell_exposed(script: str) -> str:
    """The text of ``script`` that bash would expand or run: everything outside single quotes
    and comments (double-quoted text counts: ``$(...)`` runs there). Fails on a quote left
    open, which would swallow the lines after it."""
    exposed: list[str] = []
    state, index = "plain", 0
    while index < len(script):
        char = script[index]
        if state == "single":
            state = "plain" if char == "'" else "single"
        elif state == "comment":
            state = "plain" if char == "\n" else "comment"
            exposed.append(char if char == "\n" else "")
        elif char == "\\" and state in ("plain", "double"):
            exposed.append(script[index:index + 2])
            index += 1
        elif state == "double":
            state = "plain" if char == '"' else "double"
            exposed.append(char)
        elif char == "'":
            state = "single"
        elif char == '"':
            state = "double"
            exposed.append(char)
        elif char == "#" and (index == 0 or script[index - 1] in " \t\n;"):
            state = "comment"
        else:
            exposed.append(char)
        index += 1
    assert state in ("plain", "comment"), f"a {state} quote is left open"
    return "".join(exposed)


def test_shell_exposed_sees_what_bash_would_run() -> None:
    assert "PWNED" not in shell_exposed(f"x={shlex.quote(chr(10).join(PAYLOADS[:12]))} # PWNED")
    for leaky in ('x="$(touch PWNED)"', "x=$(touch PWNED)", "# c\ntouch PWNED", "x=a\\'PWNED"):
        assert "PWNED" in shell_exposed(leaky)
    with pytest.raises(AssertionError, match="left open"):
        shell_exposed("x='a")


HOSTILE_NAME = "p $(touch PWNED) `touch PWNED` ; touch PWNED '\"\n${IFS}touch${IFS}PWNED \\"
MARKED = [p for p in PAYLOADS if "PWNED" in p]


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project, bundle cache, pod workdir and pod python whose paths are shell payloads."""
    project = tmp_path / HOSTILE_NAME / "project"
    (project / "configs").mkdir(parents=True)
    (project / "configs" / "fz.yaml").write_text("extends: v3\nexperiment: fz\n")
    for key, value in {"XDG_STATE_HOME": str(tmp_path / "state"),
                       "XDG_CACHE_HOME": str(tmp_path / HOSTILE_NAME / "cache"),
                       "RUNPOD_HOST": "127.0.0.1",
                       "RUNPOD_WORKDIR": f"/tmp/{HOSTILE_NAME.replace(chr(10), ' ')}",
                       "RUNPOD_PYTHON": "python3 $(touch PWNED)", "NO_COLOR": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(project)
    return project


@pytest.mark.parametrize("backend", ["local", "slurm", "pbs", "pod"])
@pytest.mark.parametrize("sweep", [False, True])
def test_hostile_values_are_single_quoted_in_every_script(hostile: Path, backend: str,
                                                          sweep: bool) -> None:
    """Paths (project, bundle cache, runs_dir, the pod's workdir), the pod's python and sweep
    values end up inside single quotes or comments of every rendered script and command."""
    runs = "r/"
    if backend == "slurm":  # sbatch cannot take a log path holding a backslash: refused
        answer = invoke("submit", "fz", "--dry-run", "--backend", backend)
        assert answer.code == 2 and "backslash" in answer.err, answer.err
        runs = f"{hostile.parents[1]}/r/"  # the payloads below, without the project's '\\'
    for payload in MARKED:
        argv = ["--json", "submit", "fz", "--dry-run", "--backend", backend,
                "--set", f"runs_dir={json.dumps(runs + payload)}"]
        if backend == "pod":
            argv += ["--remote", "runpod"]
        if sweep:
            argv += ["--sweep", f"data.label_column={payload.replace(',', '')},b"]
        answer = invoke(*argv)
        assert_clean(answer, tuple(argv))
        if "${" in payload and answer.code == 2:  # hpcrun's own interpolation: IFS is unset
            assert "environment variable IFS is not set" in answer.err
            continue
        if re.search(r"[\r\n]", payload):  # refused in runs_dir; the paths above carry them
            assert answer.code == 2 and "without control characters" in answer.err
            continue
        assert answer.code == 0, answer.err
        plans = json.loads(answer.out)["plans"]
        assert len(plans) >= 1
        for plan in plans:
            for text in (plan["script"], plan["command"]):
                exposed = shell_exposed(text)
                assert "PWNED" not in exposed, (payload, exposed)


@pytest.mark.parametrize("setting", [
    "experiment=a;touch PWNED", "experiment=../../etc", "experiment=-x",
    "pipeline.0.name=$(touch PWNED)", "pipeline.0.name=../x",
    "training.loss.components={'a b': 1}", "resources.partition=a b",
    "resources.queue=q`touch PWNED`", 'resources.qos="q\\nx"', "resources.mem=16G;id",
    'resources.time="1:00:00\\n#SBATCH --wrap=id"', "resources.constraint=a$(id)",
    'resources.setup=["a\\nb"]', 'resources.pbs.directives=["-l x\\n#PBS -q y"]',
    'resources.slurm.setup=["a\\rb"]',
    "resources.slurm.directives=['x']",
])
def test_names_that_reach_directives_or_comments_are_validated(project: Path,
                                                               setting: str) -> None:
    argv = ("submit", "v3", "--dry-run", "--backend", "pbs", "--set", setting)
    answer = invoke(*argv)
    assert_clean(answer, argv)
    assert answer.code == 2, setting
    section = setting.partition("=")[0].rsplit(".", 1)[0]
    assert answer.err.startswith(f"hpcrun: error: --set: {section}"), answer.err  # names it


@pytest.mark.parametrize(("variable", "value"), [
    ("RUNPOD_HOST", "-oProxyCommand=touch PWNED"), ("RUNPOD_HOST", "h;touch PWNED"),
    ("RUNPOD_USER", "root$(touch PWNED)"), ("RUNPOD_PORT", "22 -oProxyCommand=x"),
    ("RUNPOD_WORKDIR", "-rf"), ("RUNPOD_WORKDIR", "w\ntouch PWNED"),
    ("RUNPOD_WORKDIR", "w\rtouch PWNED"),
])
def test_remote_fields_that_reach_ssh_argv_are_validated(project: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    argv = ("submit", "v3", "--dry-run", "--backend", "pod", "--remote", "runpod")
    answer = invoke(*argv)
    assert_clean(answer, argv)
    assert answer.code == 2 and "remotes.runpod" in answer.err, answer.err


@pytest.mark.parametrize("names", ['["*"]', '["WANDB_*"]', '["A B"]', '["X,Y"]', '["-oX"]'])
def test_forwarded_environment_names_are_single_names_not_patterns(project: Path,
                                                                  names: str) -> None:
    """ssh's SendEnv takes patterns: '*' would send the whole environment to the remote."""
    (project / "configs" / "remotes.yaml").write_text(
        f"remotes:\n  box:\n    host: 127.0.0.1\n    workdir: /w\n    env: {names}\n")
    argv = ("submit", "v3", "--dry-run", "--backend", "pod", "--remote", "box")
    answer = invoke(*argv)
    assert_clean(answer, argv)
    assert answer.code == 2 and "remotes.box.env" in answer.err and "no patterns" in answer.err, \
        answer.err


def test_an_extends_chain_is_held_to_the_caps_of_one_config(project: Path) -> None:
    configs = project / "configs"
    big = "\n".join(f"  k{i}: {i}" for i in range(20_000))
    for i in range(3):  # each under the cap, together over it
        parent = f"extends: big{i - 1}\n" if i else "extends: v3\n"
        (configs / f"big{i}.yaml").write_text(f"{parent}model:\n options:\n{big}\n")
    for i in range(20):
        parent = f"extends: deep{i - 1}\n" if i else "extends: v3\n"
        (configs / f"deep{i}.yaml").write_text(parent)
    (configs / "self.yaml").write_text("extends: self\n")
    for name, expected in (("big2", "more than 50000 values"),
                           ("deep19", "an extends chain of more than 16 configs"),
                           ("self", "is this file itself")):
        answer = invoke("config", "show", name)
        assert_clean(answer, ("config", "show", name))
        assert answer.code == 2 and expected in answer.err, answer.err


# --------------------------------------------------------------------------- run directories


#: text aimed at a terminal and at rich: markup tags, escape sequences, and the fuzzers' payloads
terminal_text = st.one_of(text, st.sampled_from([
    "[/x]", "[bold red]x[/]", "a[link=file:///etc]b", "\x1b]52;c;cHduZWQ=\x07",
    "a\x1b[2Jb", "\r\x1b[1A", ":smile:", "[/]"]),
    st.builds(lambda a, b: a + b, st.sampled_from(["[/", "\x1b[", "["]), text))


@pytest.mark.slow
@fuzz(8)  # each example draws a report's plots
@given(header=terminal_text, cell=terminal_text, message=terminal_text,
       exception=terminal_text)
def test_generated_run_directories_print_as_text_through_report(project: Path, header: str,
                                                                cell: str, message: str,
                                                                exception: str) -> None:
    """Hostile metric names, CSV cells, status messages and failure exceptions reach the
    terminal through `report` as text: no traceback, no markup read, no raw escape."""
    import csv
    import io
    import tempfile

    from test_report import make_run

    from hpcrun import rundir

    run = make_run(Path(tempfile.mkdtemp(dir=project)), state="FAILED")
    training = run / "finetune" / rundir.TRAINING
    lines = training.read_text().splitlines()
    clean = "".join(c for c in header if c not in ',"\n\r\x00') or "x"
    lines[0] = lines[0].replace("Val MCC", f"Val {clean}")
    cells = next(csv.reader([lines[1]]))
    cells[-2] = cell
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(cells)
    lines[1] = out.getvalue()
    training.write_text("\n".join(lines) + "\n", errors="surrogatepass")
    status = rundir.read_json(run / rundir.STATUS) or {}
    rundir.write_json(run / rundir.STATUS, {**status, "message": message, "stage": message})
    rundir.write_json(run / rundir.FAILURE, {"exception": exception, "rank": 0,
                                             "stage": "finetune", "traceback": [exception]})
    argv = ("report", str(run))
    answer = invoke(*argv)
    assert answer.code in (0, 1), (argv, answer.err)
    assert "Traceback" not in answer.out + answer.err and "\x1b" not in answer.out, answer.err


@pytest.mark.slow
@fuzz(60)
@given(experiment=terminal_text, folder=terminal_text, message=terminal_text, point=value)
def test_generated_job_records_print_as_text_through_list_and_status(
        project: Path, experiment: str, folder: str, message: str, point: Any) -> None:
    """A job store and run directories holding hostile text (what another hpcrun version, a
    crafted state directory or a job's own writes could leave) reach the terminal through
    rich's tables and lines as text: no traceback, no markup read, no raw escape."""
    import secrets
    import tempfile

    from hpcrun import rundir
    from hpcrun.job import JobRecord
    from hpcrun.store import JobStore

    safe = "".join(c for c in folder if c not in "/\0") or "x"
    run = Path(tempfile.mkdtemp(dir=project)) / safe.encode("utf-8", "replace").decode()[:60]
    try:
        run.mkdir()
    except (OSError, ValueError):
        return
    rundir.write_json(run / rundir.STATUS, {"state": "FAILED", "message": message,
                                            "stage": message, "stages": {message: "FAILED"}})
    rundir.write_json(run / rundir.FAILURE, {"exception": message, "rank": 0})
    name = "".join(c for c in message if c not in ',"\n\r\0\x85\u2028\u2029') or "x"
    (run / "train").mkdir()
    (run / "train" / rundir.TRAINING).write_text(
        f"Epoch,Epoch Time,Train Loss,Val Loss,Val {name},Learning Rate\n1,1,0.5,0.6,0.7,0.1\n",
        errors="surrogatepass")
    job = secrets.token_hex(6)
    experiment = experiment.encode("utf-8", "replace").decode()  # what SQLite can store
    point = json.loads(json.dumps(point).encode("utf-8", "replace").decode())
    message = message.encode("utf-8", "replace").decode()
    JobStore().add([JobRecord(id=job, backend="local", host="h", experiment=experiment,
                              run_dir=str(run), project_dir=str(project),
                              info={"sweep_point": point, "stages": [message]})])
    for argv in (("list",), ("status", job), ("--json", "status", job),
                 ("monitor", "--once", job)):
        answer = invoke(*argv)
        assert answer.code in (0, 1), (argv, answer.err)
        assert "Traceback" not in answer.out + answer.err, (argv, answer.err)
        if "--json" not in argv:
            assert "\x1b" not in answer.out and "\x07" not in answer.out, (argv, answer.out)
    # the live dashboard, as a terminal gets it: rich's own colours and nothing else
    import io
    import re

    from rich.console import Console

    from hpcrun import ops
    from hpcrun.cli import views

    terminal = io.StringIO()
    snap = ops.open_monitor(job, project).refresh()
    Console(file=terminal, force_terminal=True, width=100).print(
        views.Escaped(views.render_snapshot(snap)))
    raw = re.sub(r"\x1b\[[0-9;]*m", "", terminal.getvalue())
    assert "\x1b" not in raw and "\x07" not in raw, raw
