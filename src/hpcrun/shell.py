"""The one place hpcrun starts processes.

Every external command (git, ssh, rsync, sbatch, torchrun, ...) goes through a runner, which
records the argv, accepts the caller's success codes and raises ``CommandFailed`` with the
argv, exit code and the tail of stderr otherwise.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import OperationFailed


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandFailed(OperationFailed):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str):
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        tail = " | ".join(stderr.strip().splitlines()[-3:]) if stderr.strip() else "no output"
        super().__init__(f"{shlex.join(self.argv)} exited with {returncode}: {tail}")


#: how long a command interrupted with Ctrl-C may take to end by itself, then after being
#: asked once more, before it is killed
INTERRUPT_GRACE_S = 5.0


def _end_after_interrupt(proc: subprocess.Popen) -> None:
    """Ctrl-C reached hpcrun and, through the terminal's process group, the command too: let
    the command end by itself first (rsync keeps the part of a file it has, so the next run
    resumes it), then send it SIGINT (when only hpcrun was interrupted), then kill it."""
    import signal

    for action in (None, signal.SIGINT, signal.SIGKILL):
        if action is not None:
            try:
                proc.send_signal(action)
            except ProcessLookupError:
                return
        try:
            proc.wait(timeout=INTERRUPT_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def _abandon(proc: subprocess.Popen) -> None:
    """Kill the command and reap it, without waiting for its output to close (a process it
    started may keep the pipes open for as long as it runs)."""
    proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


class LocalRunner:
    """Runs commands on this machine."""

    def run(self, argv: Sequence[str], *, cwd: str | None = None,
            env: Mapping[str, str] | None = None, input: str | None = None,
            timeout: float | None = None, ok_codes: Sequence[int] = (0,),
            check: bool = True) -> Result:
        try:
            proc = subprocess.Popen(list(argv), cwd=cwd,
                                    env=dict(env) if env is not None else None, text=True,
                                    stdin=subprocess.PIPE if input is not None
                                    else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise CommandFailed(argv, 127, f"{argv[0]}: command not found") from None
        try:
            stdout, stderr = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            _abandon(proc)  # a child of the command may hold its output open: not waited for
            raise CommandFailed(argv, 124, f"timed out after {exc.timeout:.0f}s") from None
        except KeyboardInterrupt:
            _end_after_interrupt(proc)
            raise
        except BaseException:
            _abandon(proc)
            raise
        result = Result(tuple(argv), proc.returncode, stdout, stderr)
        if check and proc.returncode not in ok_codes:
            raise CommandFailed(argv, proc.returncode, stderr)
        return result

    def stream(self, argv: Sequence[str], *, input: str | None = None,
               on_line: Callable[[str], None] | None = None, ok_codes: Sequence[int] = (0,),
               timeout: float | None = None) -> Result:
        """Run ``argv``, handing each line (or carriage-return update) of stdout to
        ``on_line`` as it arrives (progress output)."""
        import threading

        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, bufsize=1)
        except FileNotFoundError:
            raise CommandFailed(argv, 127, f"{argv[0]}: command not found") from None
        errors: list[str] = []
        reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
        reader.start()
        if input is not None:
            proc.stdin.write(input)
        proc.stdin.close()
        out: list[str] = []
        buffer = ""
        try:
            while True:
                chunk = proc.stdout.read(1)
                if not chunk:
                    break
                if chunk in "\r\n":
                    if buffer and on_line:
                        on_line(buffer)
                    out.append(buffer)
                    buffer = ""
                else:
                    buffer += chunk
            if buffer:
                out.append(buffer)
            proc.wait(timeout=timeout)
        except KeyboardInterrupt:
            _end_after_interrupt(proc)
            raise
        reader.join(timeout=5)
        result = Result(tuple(argv), proc.returncode, "\n".join(out), "".join(errors))
        if proc.returncode not in ok_codes:
            raise CommandFailed(argv, proc.returncode, result.stderr)
        return result

    def spawn_detached(self, argv: Sequence[str], *, cwd: str, output: str,
                       env: Mapping[str, str] | None = None) -> int:
        """Start ``argv`` in a new session (it outlives this process and the terminal) with
        stdin from /dev/null and stdout+stderr appended to ``output``; return its pid."""
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        with open(output, "ab") as out:
            try:
                proc = subprocess.Popen(list(argv), cwd=cwd, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, close_fds=True,
                                        env=dict(env) if env is not None else None)
            except FileNotFoundError:
                raise CommandFailed(argv, 127, f"{argv[0]}: command not found") from None
        return proc.pid

    @staticmethod
    def which(name: str) -> str | None:
        return shutil.which(name)


def _ssh_failure(target: str, stderr: str, known_hosts: str, identity: str | None) -> str | None:
    """One line for ssh's own failures (exit 255), or None when the remote command failed."""
    text = stderr.lower()
    if "remote host identification has changed" in text or \
            "host key verification failed" in text:
        return (f"the host key of {target} changed or is unknown (checked against "
                f"{known_hosts}); if the pod was recreated, remove its old key: "
                f"ssh-keygen -R '<host>' -f {known_hosts}")
    if "permission denied" in text:
        key = identity or "your default ssh key"
        return f"{target} refused the key {key}: add its .pub to the remote's authorized_keys"
    for needle in ("connection refused", "timed out", "no route to host",
                   "could not resolve hostname", "network is unreachable",
                   "connection closed", "connection reset"):
        if needle in text:
            return (f"cannot reach {target}: {needle} (is the machine up? check the remote's "
                    "host and port)")
    return None


def _private_dir(path: Path) -> None:
    """``path`` must be a directory of this user's that no one else can enter: ssh's control
    sockets live there, and whoever can put a socket there answers hpcrun's ssh commands."""
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise OperationFailed(f"{path} is not a directory owned by this user; refusing to keep "
                              "ssh control sockets there",
                              hint=f"remove it: rm -r {shlex.quote(str(path))}")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)


def default_control_dir(state: Path) -> Path:
    """Where the ssh control sockets of hpcrun's ``state`` directory live: one folder per
    state directory (so per known_hosts file), with a short path (unix socket paths are
    limited to ~100 bytes). Each connection's processes name their socket there."""
    import hashlib

    tag = hashlib.sha256(str(state).encode()).hexdigest()[:8]
    return Path(f"/tmp/hpcrun-ssh-{os.getuid()}-{tag}")


class SshRunner:
    """Runs commands on a remote through the OpenSSH client: one ControlMaster connection
    reused by every call, BatchMode, a connect timeout, and host keys always checked
    (``accept-new`` into hpcrun's own known_hosts file; never ``StrictHostKeyChecking=no``)."""

    def __init__(self, remote, *, known_hosts: Path | None = None,
                 control_dir: Path | None = None, local: LocalRunner | None = None):
        from .store import state_dir

        self.remote = remote
        self.local = local or LocalRunner()
        state = state_dir()
        self.known_hosts = Path(known_hosts or state / "known_hosts")
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.known_hosts.exists():
            self.known_hosts.touch(mode=0o600)
        self.control_dir = Path(control_dir or default_control_dir(state))
        self.control_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _private_dir(self.control_dir)

    @property
    def target(self) -> str:
        user = f"{self.remote.user}@" if self.remote.user else ""
        return f"{user}{self.remote.host}"

    def ssh_argv(self) -> list[str]:
        r = self.remote
        argv = ["ssh", "-p", str(r.port), "-o", "BatchMode=yes",
                "-o", f"ConnectTimeout={r.connect_timeout}",
                "-o", "StrictHostKeyChecking=accept-new",
                "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir}/%C",
                "-o", "ControlPersist=60", "-o", "ServerAliveInterval=15",
                "-o", "LogLevel=ERROR"]
        if r.identity_file:
            argv += ["-i", os.path.expanduser(r.identity_file), "-o", "IdentitiesOnly=yes"]
        for name in r.env:
            argv += ["-o", f"SendEnv={name}"]
        for option in r.ssh_options:
            argv += ["-o", option]
        return argv

    def rsync_shell(self) -> str:
        """The ``-e`` value for rsync: the same connection settings."""
        return shlex.join(self.ssh_argv())

    def rsync_argv(self, *options: str) -> list[str]:
        """rsync over this connection, resumable (``--partial``), with the paths sent through
        rsync's own protocol (``-s``): on the remote shell's command line, rsync's escaping
        of them has let ``...`` in a path run (Debian's 3.2.7-1+deb12u6)."""
        return ["rsync", "-az", "-s", "--partial", *options, "-e", self.rsync_shell()]

    def run(self, argv: Sequence[str] | str, *, input: str | None = None,
            timeout: float | None = None, ok_codes: Sequence[int] = (0,),
            check: bool = True, cwd: str | None = None,
            env: Mapping[str, str] | None = None) -> Result:
        command = argv if isinstance(argv, str) else shlex.join(argv)
        if cwd:
            command = f"cd {shlex.quote(cwd)} && {command}"
        full = [*self.ssh_argv(), self.target, "--", command]
        result = self.local.run(full, input=input, timeout=timeout, check=False)
        if result.returncode == 255:
            problem = _ssh_failure(f"{self.target}:{self.remote.port}", result.stderr,
                                   str(self.known_hosts), self.remote.identity_file)
            if problem:
                raise OperationFailed(problem)
        if check and result.returncode not in ok_codes:
            raise CommandFailed(full, result.returncode, result.stderr)
        return result

    def rsync(self, argv: Sequence[str], *, input: str | None = None,
              on_line: Callable[[str], None] | None = None, timeout: float = 3600) -> Result:
        """Run an rsync whose ``-e`` is ``rsync_shell()`` on this machine; a failure of the ssh
        connection under it is the same one line as for ``run``."""
        try:
            if on_line is not None:
                return self.local.stream(argv, input=input, on_line=on_line, timeout=timeout)
            return self.local.run(argv, input=input, timeout=timeout)
        except CommandFailed as exc:
            problem = _ssh_failure(f"{self.target}:{self.remote.port}", exc.stderr,
                                   str(self.known_hosts), self.remote.identity_file)
            if problem:
                raise OperationFailed(problem) from None
            raise

    def close(self) -> None:
        self.local.run([*self.ssh_argv(), "-O", "exit", self.target], check=False, timeout=10)

    def which(self, name: str) -> str | None:
        result = self.run(["sh", "-c", f"command -v {shlex.quote(name)}"], check=False)
        return result.stdout.strip() or None
