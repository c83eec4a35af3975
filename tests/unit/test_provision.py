"""Setting a remote up, the parts that need no remote: the build identity a checkout and its
wheel share, a wheel packed again from an installed hpcrun, the judgement of what a remote's
python has, the wheelhouse's targets, and data paths."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

from hpcrun import probe, provision
from hpcrun.config import RemoteConfig, load_config
from hpcrun.errors import BadInput
from hpcrun.ops.submission import _data_paths


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel setup ships, built from this checkout (as `hpcrun setup` does)."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(cache))
        return provision.build_wheel()


def test_the_wheel_has_the_build_digest_of_the_checkout_it_was_built_from(wheel, tmp_path):
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path)
        names = archive.namelist()
    assert "hpcrun/_resources/launchers/torchrun.sh" in names
    assert probe.build_digest(tmp_path / "hpcrun") == provision.local_build().digest
    (tmp_path / "hpcrun" / "_resources" / "launchers" / "torchrun.sh").write_text("# edited\n")
    assert probe.build_digest(tmp_path / "hpcrun") != provision.local_build().digest


def test_an_installed_hpcrun_is_packed_again_into_an_equal_wheel(wheel, tmp_path):
    """hpcrun installed from a wheel (no checkout to build from) ships itself as installed."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(target), str(wheel)], check=True)
    out = tmp_path / "out"
    out.mkdir()
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "from hpcrun import provision, probe; "
            "w = provision.repack_installed(Path(sys.argv[2])); "
            "print(w); print(provision._wheel_digest(w)); print(provision.local_build().digest)")
    proc = subprocess.run([sys.executable, "-I", "-c", code, str(target), str(out)],
                          capture_output=True, text=True, check=True)
    repacked, digest, running = proc.stdout.split()
    assert digest == running == provision.local_build().digest
    with zipfile.ZipFile(repacked) as archive:
        record = archive.read("hpcrun-0.1.0.dist-info/RECORD").decode()
        assert "entry_points.txt" in " ".join(archive.namelist())
    assert "hpcrun/probe.py,sha256=" in record and "direct_url.json" not in record


def test_the_probe_tells_ours_from_a_foreign_package_without_importing_it(tmp_path):
    foreign = tmp_path / "foreign" / "hpcrun"
    foreign.mkdir(parents=True)
    (foreign / "__init__.py").write_text('__version__ = "2.0"\nraise SystemExit("imported")\n')
    code = (f"import sys; sys.path.insert(0, {str(foreign.parent)!r}); "
            f"exec(open({str(REPO / 'src/hpcrun/probe.py')!r}).read().replace("
            "'if __name__', 'if False and __name__')); "
            "import json; print(json.dumps(find_hpcrun()))")
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    found = json.loads(proc.stdout)
    assert found == {"path": str(foreign), "ours": False, "version": "2.0", "build": None}
    want = provision.Build("0.1.0", "abc")
    assert "another project, not this tool" in provision.judge({"hpcrun": found}, want)
    assert provision.judge({"hpcrun": None}, want) == "hpcrun is not installed"
    older = {"ours": True, "version": "0.0.9", "build": "x"}
    assert provision.judge({"hpcrun": older}, want) == "it has hpcrun 0.0.9 (this is 0.1.0)"
    other = {"ours": True, "version": "0.1.0", "build": "x"}
    assert provision.judge({"hpcrun": other}, want) == "it has another build of hpcrun 0.1.0"
    assert provision.judge({"hpcrun": {**other, "build": "abc"}}, want) is None


def test_the_probe_answers_as_json_with_python_c(tmp_path):
    """What a remote runs: the probe's source as ``python -c``, a request as its argument,
    in a folder holding a workdir named hpcrun (which is not the package)."""
    (tmp_path / "hpcrun").mkdir()
    proc = subprocess.run([sys.executable, "-c", provision.probe_source(),
                           json.dumps({"modules": ["json", "no_such_module"],
                                       "tools": ["sh"], "disk": str(tmp_path / "a" / "b")})],
                          capture_output=True, text=True, cwd=tmp_path, check=True)
    found = json.loads(proc.stdout)
    assert found["hpcrun"]["ours"] and found["hpcrun"]["build"] == provision.local_build().digest
    assert found["modules"] == {"json": True, "no_such_module": False}
    assert found["disk"]["checked"] == str(tmp_path) and found["disk"]["free_bytes"] > 0


def test_wheelhouse_targets_and_requirements(wheel):
    reqs = provision.requirements(wheel)
    names = {provision.project_name(r) for r in reqs}
    assert {"torch", "numpy", "typer", "pydantic"} <= names and "lightning" not in names
    assert not any(";" in r for r in reqs)
    tags = provision.platforms({"machine": "aarch64", "libc": ["glibc", "2.28"]})
    assert tags[0] == "manylinux_2_28_aarch64" and "manylinux2014_aarch64" in tags
    assert "manylinux_2_17_aarch64" in tags and "manylinux_2_16_aarch64" not in tags
    assert provision.platforms({"machine": "x86_64", "libc": ["", ""]}) == ["linux_x86_64"]


def test_a_remote_without_python_runs_the_venv_hpcrun_keeps():
    managed = RemoteConfig(host="pod", workdir="/w")
    assert managed.managed and managed.interpreter == "/w/venv/bin/python"
    assert managed.data_dir == "/w/data" and managed.base_python == "python3"
    named = RemoteConfig(host="pod", workdir="/w", python="/opt/py/bin/python")
    assert not named.managed and named.interpreter == "/opt/py/bin/python"
    with pytest.raises(ValueError, match="one shell line"):
        RemoteConfig(host="pod", workdir="/w", torch="torch\n--index-url x")


def test_data_paths_come_from_the_config_and_stay_in_the_project(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "d.yaml").write_text(
        "extends: v3\nexperiment: d\ndata: {source: files, path: ./data/tables}\n"
        "sync: {data: [extra/vocab.txt, /scratch/shared]}\n")
    cfg = load_config("d", project_dir=tmp_path)
    assert _data_paths([cfg], tmp_path) == ["extra/vocab.txt", "/scratch/shared",
                                            "data/tables"]
    bad = load_config("d", ["sync.data=[../outside]"], project_dir=tmp_path)
    with pytest.raises(BadInput, match="'../outside' is not inside the project"):
        _data_paths([bad], tmp_path)
