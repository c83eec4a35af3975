"""What hpcrun keeps to itself: secrets in the project stay out of bundles, secrets in the
environment are passed by name and never written down, files with job history or host keys are
private, host keys are always checked, and no reference a job or a run directory hands back can
lead outside its directory. Each test holds a claim of docs/security.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    REMOTES,
    REPO,
    SECRET,
    TINY,
    invoke,
    stub_calls,
    stub_python,
    wait_for,
    write_config,
)

from hpcrun.config import load_remote
from hpcrun.errors import OperationFailed
from hpcrun.job import JobRecord
from hpcrun.shell import SshRunner
from hpcrun.store import JobStore


def dry_run(*argv: str) -> dict:
    answer = invoke("--json", "submit", "tiny", "--dry-run", *argv)
    assert answer.code == 0, answer.err
    return json.loads(answer.out)

@pytest.fixture
def project(secret_project: Path) -> Path:
    """A project as the cwd with a secret in the environment (tests/conftest.py)."""
    return secret_project



# --------------------------------------------------------------------------- bundles

SECRET_FILES = [
    ".env", ".env.production", "prod.env", ".envrc", "id_rsa", "id_rsa.pub", "id_ed25519",
    "deploy/id_ecdsa", "tls/server.pem", "tls/server.key", "cert.p12", ".netrc", ".pgpass",
    "credentials.json", "gcp-credentials.json", "db_secret.yaml", ".git-credentials", ".npmrc",
    ".pypirc", ".aws/credentials", ".aws/config", ".ssh/config", ".gnupg/pubring.kbx",
    ".kube/config", ".azure/accessTokens.json", ".config/gcloud/credentials.db",
    ".docker/config.json", "sub/dir/.env", "sub/.aws/credentials", "home/.docker/config.json",
    "home/user/.config/gcloud/access_tokens.db",
]


def test_every_kind_of_secret_file_is_held_back(project: Path) -> None:
    for rel in [*SECRET_FILES, "train.py", "src/model.py", "environment.yml"]:
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(f"{SECRET}\n")
    bundle = dry_run("--backend", "local")["bundle"]
    assert sorted(bundle["held_back"]) == sorted(SECRET_FILES)
    assert bundle["files"] == 5  # the three above and configs/{tiny,remotes}.yaml


def test_include_does_not_override_the_secret_filter_and_allow_is_narrow(project: Path) -> None:
    for rel in (".env", ".aws/credentials", "train.py"):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(f"{SECRET}\n")
    (project / "configs" / "tiny.yaml").write_text(TINY + "bundle: {include: ['**', '.env']}\n")
    assert sorted(dry_run("--backend", "local")["bundle"]["held_back"]) == \
        [".aws/credentials", ".env"]
    allowed = dry_run("--backend", "local", "--allow", ".aws/")["bundle"]
    assert allowed["held_back"] == [".env"]
    (project / "configs" / "tiny.yaml").write_text(TINY + "bundle: {allow: ['.env']}\n")
    assert dry_run("--backend", "local")["bundle"]["held_back"] == [".aws/credentials"]


def test_secrets_tracked_by_git_are_held_back_and_links_are_not_followed(
        project: Path, tmp_path: Path) -> None:
    outside = tmp_path / "home" / ".ssh"
    outside.mkdir(parents=True)
    (outside / "id_rsa").write_text(f"{SECRET}\n")
    (project / "notes.txt").symlink_to(outside / "id_rsa")  # an innocent name, a key behind it
    (project / "keys").symlink_to(outside, target_is_directory=True)
    (project / ".env").write_text(f"{SECRET}\n")
    (project / "train.py").write_text("print('hi')\n")
    git = ["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-f", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    data = dry_run("--backend", "local")
    assert data["bundle"]["held_back"] == [".env"]
    assert data["bundle"]["git"]["commit"]
    assert not Path(data["bundle"]["path"]).exists()  # a dry run copies nothing
    from hpcrun.bundle import describe, snapshot
    from hpcrun.config import BundleConfig

    taken = describe(project, BundleConfig())
    snapshot(taken, tmp_path / "snap")
    shipped = {p.relative_to(taken.path).as_posix() for p in taken.path.rglob("*")
               if p.is_file()}
    assert shipped == {"train.py", "configs/tiny.yaml", "configs/remotes.yaml", "BUNDLE.sha256"}
    assert not any(SECRET in (taken.path / rel).read_text() for rel in shipped)


BACKUPS_AND_FOLDERS = [
    ".env~", ".env.swp", "..env.swp", ".id_rsa.swp", "#.env#", "id_rsa.bak", ".env.orig",
    "tls/server.pem.save", "secrets/db.yaml", "x/credentials/a.txt", "keys/prod.txt",
    "ops/krb5.keytab", "backup.gpg", "signing.asc", ".s3cfg", ".boto", ".my.cnf",
    ".kaggle/kaggle.json", "home/.config/gh/hosts.yml", "deploy_key", "hf_token.txt",
]


def test_backup_copies_and_secret_folders_are_held_back(project: Path) -> None:
    for rel in [*BACKUPS_AND_FOLDERS, "train.py", "train.py~", "notes.swp", "keyboard.py"]:
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(f"{SECRET}\n")
    bundle = dry_run("--backend", "local")["bundle"]
    assert sorted(bundle["held_back"]) == sorted(BACKUPS_AND_FOLDERS)


def test_a_private_key_is_held_back_by_its_content(project: Path) -> None:
    (project / "notes.txt").write_text("see below\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n")
    (project / "server.crt").write_text("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n")
    (project / "public.txt").write_text("-----BEGIN PUBLIC KEY-----\nMIIB\n")
    big = project / "big.txt"  # over the 1 MiB the content check reads
    big.write_bytes(b"x" * (1 << 20) + b"-----BEGIN PRIVATE KEY-----\n")
    bundle = dry_run("--backend", "local")["bundle"]
    assert sorted(bundle["held_back"]) == ["notes.txt", "server.crt"]
    allowed = dry_run("--backend", "local", "--allow", "notes.txt")["bundle"]
    assert allowed["held_back"] == ["server.crt"]


def test_a_project_in_a_repository_subfolder_honours_its_gitignore(tmp_path: Path,
                                                                   monkeypatch) -> None:
    repo = tmp_path / "mono"
    project = repo / "teams" / "ml"
    (project / "configs").mkdir(parents=True)
    write_config(project / "configs" / "tiny.yaml", TINY)
    (repo / ".gitignore").write_text("local_settings.py\n*.log\n")
    (project / ".gitignore").write_text("scratch/\n")
    for rel in ("train.py", "local_settings.py", "run.log", "scratch/big.bin"):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text("x\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(project)
    data = dry_run("--backend", "local")
    assert data["bundle"]["files"] == 3  # train.py, .gitignore, configs/tiny.yaml
    from hpcrun.bundle import describe
    from hpcrun.config import BundleConfig

    assert describe(project, BundleConfig()).files == [".gitignore", "configs/tiny.yaml",
                                                       "train.py"]


def test_a_tracked_folder_replaced_by_a_link_ships_nothing_from_behind_it(
        project: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "model.py").write_text(f"{SECRET}\n")
    (project / "lib").mkdir()
    (project / "lib" / "model.py").write_text("print('mine')\n")
    git = ["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    shutil.rmtree(project / "lib")
    (project / "lib").symlink_to(outside, target_is_directory=True)  # still in git's index
    from hpcrun.bundle import describe
    from hpcrun.config import BundleConfig

    assert "lib/model.py" not in describe(project, BundleConfig()).files


# --------------------------------------------------------------------------- secrets in the env


@pytest.mark.parametrize("backend", ["local", "slurm", "pbs", "pod"])
def test_a_secret_in_the_environment_is_in_no_script_or_json(project: Path,
                                                            backend: str) -> None:
    """Scripts export PYTHONPATH and hpcrun's own variables, nothing else; no scheduler is
    told which variables to pass (sbatch then exports the environment)."""
    remote = ("--remote", "gpu") if backend == "pod" else ()
    answer = invoke("--json", "submit", "tiny", "--dry-run", "--backend", backend, *remote,
                    "--sweep", "training.lr=0.1,0.01")
    assert answer.code == 0, answer.err
    assert SECRET not in answer.out
    for plan in json.loads(answer.out)["plans"]:
        if plan["kind"] == "driver":  # a sweep's driver only starts the points' scripts
            continue
        exported = set(re.findall(r"^export (\w+)=", plan["script"], re.M))
        assert exported and all(n == "PYTHONPATH" or n.startswith("HPCRUN_") for n in exported)
        assert "--export" not in plan["command"] and " -V " not in plan["command"]
    text = invoke("submit", "tiny", "--dry-run", "--backend", backend, *remote)
    assert text.code == 0 and SECRET not in text.out + text.err


def test_interpolated_and_set_values_are_written_down(project: Path) -> None:
    """Why secrets must not travel through ${VAR} or --set: both are kept in plain text."""
    (project / "configs" / "tiny.yaml").write_text(TINY + "model: {options: {t: '${HF_TOKEN}'}}\n")
    assert SECRET in invoke("config", "show", "tiny").out
    (project / "configs" / "tiny.yaml").write_text(TINY)
    answer = invoke("--json", "submit", "tiny", "--dry-run", "--backend", "local",
                    "--set", "model.options.t=typed-on-the-command-line")
    assert json.loads(answer.out)["jobs"][0]["info"]["overrides"] == \
        ["model.options.t=typed-on-the-command-line"]


def test_a_remote_forwards_environment_variables_by_name(project: Path,
                                                         tmp_path: Path) -> None:
    (project / "configs" / "remotes.yaml").write_text(
        REMOTES + f"    identity_file: {tmp_path / 'id_ed25519'}\n")
    ssh = SshRunner(load_remote("gpu", project))
    argv = ssh.ssh_argv()
    assert "SendEnv=HF_TOKEN" in argv and SECRET not in " ".join(argv)
    assert SECRET not in ssh.rsync_shell()
    key = argv.index("-i")  # the key is named, not copied
    assert argv[key + 1] == str(tmp_path / "id_ed25519") and "IdentitiesOnly=yes" in argv
    assert [p for p in (tmp_path / "state").rglob("*") if "id_ed25519" in p.name] == []


def test_a_local_job_inherits_a_secret_that_nothing_writes_down(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job sees HF_TOKEN (inherited, as on a cluster); its script, config, logs, the job
    store and every command's --json output do not hold it."""
    stub = stub_python(tmp_path / "stub")
    monkeypatch.setattr(sys, "executable", str(stub))
    answer = invoke("--json", "submit", "tiny", "--backend", "local")
    assert answer.code == 0, answer.err
    run = Path(json.loads(answer.out)["jobs"][0]["run_dir"])
    assert wait_for(lambda: (run / "job.exit").exists(), timeout=60)
    ((_, env),) = stub_calls(stub.parent)
    assert env["HF_TOKEN"] == SECRET
    outputs = [answer.out, *(invoke("--json", *c).out for c in (["status"], ["list"], ["logs"]))]
    assert not [o for o in outputs if SECRET in o]
    written = [p for p in (*run.rglob("*"), *(tmp_path / "state").rglob("*"))
               if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert written == []


# --------------------------------------------------------------------------- private files


def test_job_store_state_dir_and_known_hosts_are_private_even_with_umask_0(
        project: Path, tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = JobStore()
        store.add([JobRecord(id="abc123", backend="local", host="h", experiment="tiny",
                             run_dir=str(tmp_path / "r"), project_dir=str(project))])
        ssh = SshRunner(load_remote("gpu", project))
    finally:
        os.umask(old)
    state = tmp_path / "state" / "hpcrun"

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(state) == 0o700
    with store._connect() as db:  # the -wal and -shm files exist while a connection is open
        db.execute("UPDATE jobs SET state = 'RUNNING'")
        files = sorted(p.name for p in state.glob("jobs.sqlite*"))
        assert files == ["jobs.sqlite", "jobs.sqlite-shm", "jobs.sqlite-wal"]
        assert {oct(mode(state / name)) for name in files} == {oct(0o600)}
    assert ssh.known_hosts == state / "known_hosts" and mode(ssh.known_hosts) == 0o600
    assert mode(ssh.control_dir) == 0o700 and ssh.control_dir.stat().st_uid == os.getuid()


def test_an_open_control_socket_directory_is_closed_and_a_foreign_one_refused(
        project: Path, tmp_path: Path) -> None:
    remote = load_remote("gpu", project)
    shared = tmp_path / "control"
    shared.mkdir()
    shared.chmod(0o777)
    assert stat.S_IMODE(SshRunner(remote, control_dir=shared).control_dir.stat().st_mode) \
        == 0o700
    link = tmp_path / "link"
    link.symlink_to(shared)
    with pytest.raises(OperationFailed, match="not a directory owned by this user"):
        SshRunner(remote, control_dir=link)
    if os.geteuid() == 0:  # another user's directory, where a socket of theirs could wait
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 65534, 65534)
        with pytest.raises(OperationFailed, match="not a directory owned by this user"):
            SshRunner(remote, control_dir=foreign)


# --------------------------------------------------------------------------- host keys


def test_nothing_in_hpcrun_turns_host_key_checking_off() -> None:
    """No ssh option (``-o X``, or a quoted ``"X"`` in code) that switches checking off."""
    pattern = re.compile(r"(-o\s*|[\"'])StrictHostKeyChecking\s*[=\s]\s*[\"']?(no|off|false)\b",
                         re.I)
    offenders = [str(p) for folder in ("src", "launchers", "templates", "configs", "hpc")
                 for p in (REPO / folder).rglob("*")
                 if p.is_file() and pattern.search(p.read_text(errors="ignore"))]
    assert offenders == []


@pytest.mark.parametrize("option", [
    "StrictHostKeyChecking=no", "stricthostkeychecking=NO", "StrictHostKeyChecking= no",
    "StrictHostKeyChecking=\tno", "StrictHostKeyChecking=off", "StrictHostKeyChecking=false",
    'StrictHostKeyChecking="no"', "StrictHostKeyChecking=ask",
    "HostKeyAlias=trusted.example.org", "hostkeyalias=x", "UserKnownHostsFile=/dev/null",
    "GlobalKnownHostsFile=/tmp/mine", "KnownHostsCommand=/bin/echo x",
])
def test_remotes_cannot_turn_host_key_checking_off(project: Path, option: str) -> None:
    (project / "configs" / "remotes.yaml").write_text(
        REMOTES + f"    ssh_options: [{json.dumps(option)}]\n")
    answer = invoke("submit", "tiny", "--dry-run", "--backend", "pod", "--remote", "gpu")
    assert answer.code == 2 and "host keys are checked" in answer.err, answer.err


def test_ssh_resolves_hpcrun_s_host_key_settings_over_a_remote_s_options(project: Path,
                                                                           tmp_path: Path
                                                                           ) -> None:
    """ssh takes the first value of each option: hpcrun's own come first, so even options
    that got past the check could not swap the known_hosts file or the checking mode."""
    remote = load_remote("gpu", project).model_copy(update={"ssh_options": [
        "UserKnownHostsFile=/dev/null", "StrictHostKeyChecking=ask"]})  # unvalidated
    ssh = SshRunner(remote)
    resolved = subprocess.run([*ssh.ssh_argv(), "-G", ssh.target], capture_output=True,
                              text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert resolved.returncode == 0, resolved.stderr
    settings = dict(line.split(" ", 1) for line in resolved.stdout.splitlines() if " " in line)
    assert settings["stricthostkeychecking"] == "accept-new"
    assert settings["userknownhostsfile"] == str(tmp_path / "state" / "hpcrun" / "known_hosts")
    assert settings["batchmode"] == "yes"


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize("ref", ["../../etc", "/etc/passwd", "..", "local://h/../../etc",
                                 "abc/../../etc", "latest/../x", "ab%", "a_b", "-1"])
@pytest.mark.parametrize("command", [("status",), ("logs",), ("fetch",), ("cancel",),
                                     ("monitor", "--once")])
def test_job_references_are_ids_not_paths(project: Path, ref: str,
                                          command: tuple[str, ...]) -> None:
    JobStore().add([JobRecord(id="abc123", backend="local", host="h", experiment="tiny",
                              run_dir=str(project / "runs" / "r"), project_dir=str(project))])
    answer = invoke(*command, ref)
    assert answer.code == 2, (command, ref, answer.err)
    assert answer.err.count("\n") == 1 and answer.err.startswith("hpcrun: error: ")


def test_report_takes_only_a_run_directory(project: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    answer = invoke("report", str(elsewhere))
    assert answer.code == 2 and "is not a run directory" in answer.err
    assert list(elsewhere.iterdir()) == []
    assert invoke("report", "../../etc").code == 2


def finished_job(project: Path, manifest: str) -> str:
    """A finished local job whose run directory holds ``manifest`` as MANIFEST.sha256."""
    run = project / "runs" / "tiny" / "r1"
    (run / "logs").mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"state": "SUCCEEDED"}))
    (run / "job.exit").write_text("0\n")
    (run / "MANIFEST.sha256").write_text(manifest)
    JobStore().add([JobRecord(id="feed01", backend="local", host="h", experiment="tiny",
                              run_dir=str(run), project_dir=str(project),
                              submitted_at=time.time())])
    return "feed01"


@pytest.mark.parametrize("entry", ["../outside.txt", "/PATH", "status.json/../../outside.txt",
                                   "logs/../../../outside.txt", "link/outside.txt", "."])
def test_fetch_refuses_manifest_entries_outside_the_run_directory(project: Path,
                                                                  tmp_path: Path,
                                                                  entry: str) -> None:
    from hpcrun.rundir import sha256_file

    outside = project / "runs" / "tiny" / "outside.txt"
    outside.parent.mkdir(parents=True)
    outside.write_text(f"{SECRET}\n")
    entry = entry.replace("/PATH", str(outside))
    job = finished_job(project, f"{sha256_file(outside)}  {entry}\n")
    (project / "runs" / "tiny" / "r1" / "link").symlink_to(outside.parent)
    answer = invoke("fetch", job)
    assert answer.code == 1, answer.err
    assert "path outside the run directory" in answer.err and SECRET not in answer.err
    assert answer.err.count("\n") == 1
