"""Nodes as YellowDog boots them, on this machine: the userdata as root, the tasks as the agent's
user (YellowDog CLI README, "The User and Group used for Tasks": ``yd-agent``, home
``/opt/yellowdog/agent``).

Each node is a mount namespace of its own (``unshare``) in which ``/opt``, ``/usr/local``,
``/etc`` and ``/root`` are overlays on this machine's: a setup installs into ``/opt/raydog``,
links into ``/usr/local/bin`` and writes ``/etc/profile.d`` as on a real node, and every write
lands in the test's folder. The agent's user is an entry in the node's own ``/etc/passwd``, with a
uid no account here has; its processes run through ``setpriv`` with that uid, its group and the
groups the agent started with, and ``HOME=/opt/yellowdog/agent``. This machine's accounts, and its
``/opt``, ``/etc`` and ``/root``, are never written.

Offline, uv cannot download the Python a setup asks for, so the node gets it where uv's download
would have put it, before the setup runs: in ``UV_PYTHON_INSTALL_DIR`` (``node_setup.PYTHONS``)
and in root's ``~/.local/share/uv/python`` (uv's default). It is a copy of this machine's Python
made relocatable as uv's downloads are (its library path ``$ORIGIN/../lib``). uv itself is the
``uv`` package's binary, in ``/usr/local/bin`` where the setup's installer would put it.

Needs root, ``unshare``, ``nsenter``, ``setpriv`` and overlayfs (see :func:`unavailable`).
"""

from __future__ import annotations

import os
import platform
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from raydog_backends.process_nodes.processes import NodeProcess
from raydog_core import node_setup

AGENT_USER = "yd-agent"
AGENT_HOME = "/opt/yellowdog/agent"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OVERLAID = ("/opt", "/usr/local", "/etc", "/root")
PASSED_ON = ("SSL_CERT_FILE", "SSL_CERT_DIR", "http_proxy", "https_proxy", "no_proxy")
"""What this machine needs to reach the package index (its certificates, a proxy): given to the
setup as the node's own would be."""
UV_DEFAULT_PYTHONS = "/root/.local/share/uv/python"


def unavailable() -> str | None:
    """Why nodes cannot be made here, or None."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "needs root on Linux (mount namespaces, other users)"
    for tool in ("unshare", "nsenter", "setpriv"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "needs overlayfs"
    if find_uv() is None:
        return "needs the uv package (the project's dev extra)"
    return None


def find_uv() -> Path | None:
    """uv's binary from the ``uv`` package (a dev dependency), as the setup's installer gives it."""
    try:
        from uv import find_uv_bin
    except ImportError:
        return None
    return Path(find_uv_bin())


def unused_id(start: int = 47000) -> int:
    """A uid and gid that no account or group on this machine has."""
    taken = {entry.pw_uid for entry in pwd.getpwall()} | {entry.pw_gid for entry in pwd.getpwall()}
    groups = Path("/etc/group").read_text().splitlines()
    taken |= {int(line.split(":")[2]) for line in groups if line.count(":") >= 3}
    return next(n for n in range(start, start + 10000) if n not in taken)


def managed_python_name() -> str:
    """The folder name uv gives its download of this machine's Python version."""
    return f"cpython-{platform.python_version()}-linux-{platform.machine()}-gnu"


def stage_python(folder: Path) -> Path:
    """A copy of this machine's Python (standard library, no site-packages) whose library path
    is relative to it, as uv's downloads are: a node can run it from anywhere."""
    base = Path(sys.base_prefix)
    target = folder / managed_python_name()
    skipped = {"site-packages", "test", "__pycache__", "idlelib", "tkinter", "turtledemo"}
    shutil.copytree(
        base / "lib", target / "lib", symlinks=True, ignore=lambda _, n: skipped & set(n)
    )
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (target / "lib" / version / "site-packages").mkdir()
    (target / "bin").mkdir()
    binary = (base / "bin" / version).read_bytes()
    old = str(base / "lib").encode() + b"\0"
    new = b"$ORIGIN/../lib"
    binary = binary.replace(old, new + b"\0" * (len(old) - len(new)))
    (target / "bin" / version).write_bytes(binary)
    (target / "bin" / version).chmod(0o755)
    for name in ("python3", "python"):
        (target / "bin" / name).symlink_to(version)
    return target


@dataclass
class NodeMachine:
    """One node: its mount namespace, held open by a process that sleeps in it."""

    folder: Path
    python: Path
    """The staged Python (:func:`stage_python`)."""
    uv: Path
    uid: int
    """The agent user's uid and gid, when the image has it (``agent_installed``)."""
    agent_installed: bool = True
    """Whether the image has the agent (its user and home) before the userdata runs."""
    groups: list[str] = field(default_factory=list)
    """The agent's groups besides its own, as /etc/group had them when the agent started."""
    holder: subprocess.Popen[bytes] | None = None
    tasks: list[NodeProcess] = field(default_factory=list)

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        mounts = []
        for target in OVERLAID:
            layer = self.upper(target)
            work = self.folder / "work" / target.strip("/").replace("/", "-")
            layer.mkdir(parents=True)
            work.mkdir(parents=True)
            lower = os.stat(target)
            os.chown(layer, lower.st_uid, lower.st_gid)
            layer.chmod(lower.st_mode & 0o7777)
            mounts.append(
                f"mount -t overlay overlay -o lowerdir={target},upperdir={layer},workdir={work}"
                f" {target}"
            )
        if self.agent_installed:
            self._place_agent_user()
        for pythons in (node_setup.PYTHONS, UV_DEFAULT_PYTHONS):
            self._link_tree(self.python, self.host_path(pythons) / self.python.name)
        local_bin = self.host_path("/usr/local/bin")
        local_bin.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.uv, local_bin / "uv")
        ready = self.folder / "ready"
        script = " && ".join([*mounts, f"touch {ready}", "exec sleep infinity"])
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.holder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node's mounts failed (exit {self.holder.poll()})")
            time.sleep(0.05)

    def upper(self, target: str) -> Path:
        return self.folder / "layers" / target.strip("/").replace("/", "-")

    def host_path(self, path: str) -> Path:
        """Where a file written on the node (in an overlaid folder) is on this machine."""
        for target in OVERLAID:
            if path == target or path.startswith(target + "/"):
                return self.upper(target) / path[len(target) :].lstrip("/")
        raise ValueError(f"{path} is not in an overlaid folder")

    def _place_agent_user(self) -> None:
        """What the agent's installer does first: the user, its group and its home."""
        etc = self.upper("/etc")
        entry = f"{AGENT_USER}:x:{self.uid}:{self.uid}::{AGENT_HOME}:/bin/bash\n"
        (etc / "passwd").write_text(Path("/etc/passwd").read_text() + entry)
        (etc / "group").write_text(Path("/etc/group").read_text() + f"{AGENT_USER}:x:{self.uid}:\n")
        for name in ("passwd", "group"):
            (etc / name).chmod(0o644)
        home = self.host_path(AGENT_HOME)
        home.mkdir(parents=True)
        os.chown(home, self.uid, self.uid)

    def _link_tree(self, source: Path, target: Path) -> None:
        """``source`` at ``target``, sharing the files (hard links), not the disk space."""
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, target, symlinks=True, copy_function=os.link)

    def _enter(self, *command: str) -> list[str]:
        assert self.holder is not None
        return ["nsenter", f"--target={self.holder.pid}", "--mount", "--", *command]

    def _as_agent(self, *command: str) -> list[str]:
        return self._enter(
            "setpriv",
            f"--reuid={AGENT_USER}",
            f"--regid={AGENT_USER}",
            f"--groups={','.join([AGENT_USER, *self.groups])}",
            "--",
            "env",
            f"HOME={AGENT_HOME}",
            f"USER={AGENT_USER}",
            f"LOGNAME={AGENT_USER}",
            *command,
        )

    def setup_environment(self) -> dict[str, str]:
        """What userdata gets at boot: a PATH, no HOME (and how to reach the package index)."""
        passed = {name: os.environ[name] for name in PASSED_ON if name in os.environ}
        return {"PATH": PATH, **passed}

    def run_userdata(self, userdata: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run the node's userdata as root at boot: no HOME, nothing of this process's
        environment."""
        script = self.folder / "userdata.sh"
        script.write_text(userdata)
        return subprocess.run(
            self._enter("bash", str(script)),
            env=self.setup_environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def run_as_agent(
        self, command: str, environment: Mapping[str, str] = {}, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """A command as ``ray up`` runs one over SSH: a login shell of the agent's user."""
        return subprocess.run(
            self._as_agent("bash", "-lc", f"cd && {command}"),
            env={"PATH": PATH, **environment},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start_task(self, script: str, environment: Mapping[str, str], name: str) -> NodeProcess:
        """Start a task as the agent does: its script, as the agent's user, in its own session;
        stopped with the node."""
        task_file = self.host_path(AGENT_HOME) / f"{name}.sh"
        task_file.write_text(script)
        os.chown(task_file, self.uid, self.uid)
        launcher = shlex.join(self._as_agent("bash", "-c", f'cd && exec bash "$HOME/{name}.sh"'))
        task = NodeProcess.start(
            f"exec {launcher}",
            env={"PATH": PATH, **environment},
            home=self.folder / "tasks" / name,
            log_path=self.folder / "tasks" / f"{name}.log",
        )
        self.tasks.append(task)
        return task

    def stop(self) -> None:
        for task in self.tasks:
            task.stop(timeout=20)
        self.tasks.clear()
        if self.holder is not None and self.holder.poll() is None:
            os.killpg(self.holder.pid, signal.SIGTERM)
            self.holder.wait(timeout=10)
        self.holder = None

    def account(self, name: str) -> int | None:
        """The uid of ``name`` in the node's own ``/etc/passwd``, if the node has that user."""
        written = self.host_path("/etc/passwd")
        passwd = written if written.exists() else Path("/etc/passwd")
        for line in passwd.read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name:
                return int(fields[2])
        return None
