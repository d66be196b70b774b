"""What a node needs before it can join the cluster, pinned to the client's versions.

Ray refuses to mix versions of Python and Ray between the client and the nodes, so the script
``raydog node-setup`` prints installs exactly the client's Python and ``ray[default]``, and on the
head what raydog needs (valkey-server included). raydog itself reaches the head as the client's
own wheel (``head_packages``), so Ray's launcher needs no edit and no PYTHONPATH there:
``module: raydog_core.RayDogNodeProvider`` imports normally. Workers need Ray only.

On some platforms (YellowDog) a node's agent starts taking tasks before the setup has finished,
so the setup ends by writing a marker file, and the core puts a wait for that marker in front
of the task scripts of nodes that run this setup (``runs_raydog_setup``): on a backend whose
nodes run it (``runs_node_setup``), unless the node type's userdata is a setup that never
writes the marker (``is_raydog_setup``), such as a yellowdog-ray config's.

The setup runs as root at boot, perhaps without ``HOME``; the node's tasks and ``ray up``'s SSH
commands run as another user (YellowDog's ``yd-agent``). So everything they run lives under
``/opt/raydog``, readable by every user, and uv keeps its Pythons and cache there too: by
default uv would put the Python it downloads in root's home, which other users cannot enter.
"""

from __future__ import annotations

import math
import platform
import re
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from raydog_core import head_packages, plugins, state
from raydog_core.config_model import (
    DEFAULT_SETUP_TIMEOUT_MINUTES,
    NodeSetupOptions,
    PluginChoice,
    RayDogConfig,
)
from raydog_core.errors import ConfigError

ROOT = "/opt/raydog"
VENV = f"{ROOT}/venv"
PYTHONS = f"{ROOT}/python"
"""uv's ``UV_PYTHON_INSTALL_DIR`` on a node: the Python it downloads, which the venv links to."""
UV_CACHE = f"{ROOT}/uv-cache"
PROFILE = "/etc/profile.d/raydog.sh"
"""The node setup's environment (the venv first on the PATH); tasks source it after the wait."""
INSTALLED = f"{VENV}/raydog-installed"
"""Written on the head once ``ray up`` has installed the client's raydog there (wheels)."""
SETUP_FINISHED = f"{ROOT}/setup-finished"
"""The marker the node setup writes last (atomically); tasks wait for it."""
SETUP_FINISHED_ENV = "RAYDOG_SETUP_FINISHED"
"""Moves the marker, for machines that run several nodes (an emulator); unset on real nodes."""
MARKER = f'"${{{SETUP_FINISHED_ENV}:-{SETUP_FINISHED}}}"'
INSTALL_CHOICES = ("wheel", "index")
MAX_SETUP_TIMEOUT_MINUTES = 10_080
"""A week: the wait is shell arithmetic in seconds, which a larger number could overflow."""
PROVIDER_KEYS = frozenset({"node_setup_timeout_minutes", "raydog_install"})
"""The provider section's keys read here (not compute backend options)."""
VERSIONS_TAG = "raydog-versions"
"""Tag the head-side provider sets on the head node: the versions it runs with."""


@dataclass(frozen=True)
class Versions:
    python: str
    ray: str
    raydog: str

    @classmethod
    def of_this_client(cls) -> Versions:
        return cls(
            python=platform.python_version(),
            ray=metadata.version("ray"),
            raydog=metadata.version("raydog"),
        )

    def __str__(self) -> str:
        return f"python={self.python} ray={self.ray} raydog={self.raydog}"

    @classmethod
    def parse(cls, text: str) -> Versions:
        fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
        return cls(fields.get("python", "?"), fields.get("ray", "?"), fields.get("raydog", "?"))


def parse_options(provider: Mapping[str, Any]) -> NodeSetupOptions:
    key = "node_setup_timeout_minutes"
    minutes = provider.get(key, DEFAULT_SETUP_TIMEOUT_MINUTES)
    if (
        isinstance(minutes, bool)
        or not isinstance(minutes, (int, float))
        or not 0 < minutes <= MAX_SETUP_TIMEOUT_MINUTES
    ):
        raise ConfigError(
            f"provider.{key}",
            f"expected a number of minutes > 0 and at most {MAX_SETUP_TIMEOUT_MINUTES}, "
            f"got {minutes!r}",
        )
    install = provider.get("raydog_install", "wheel")
    if install not in INSTALL_CHOICES:
        raise ConfigError(
            "provider.raydog_install", f"expected wheel or index, got {install!r}", INSTALL_CHOICES
        )
    return NodeSetupOptions(timeout_minutes=float(minutes), raydog_install=install)


def runs_node_setup(compute: PluginChoice) -> bool:
    """Whether the compute backend's nodes run this setup (``ComputeBackend.runs_node_setup``)."""
    plugin = plugins.load("compute", compute.name, compute.paths[""])
    return bool(getattr(plugin, "runs_node_setup", False))


def is_raydog_setup(userdata: str) -> bool:
    """Whether a node's boot script (userdata) is RayDog's node setup, whose end marker tasks
    can wait for: it names the marker (``SETUP_FINISHED``), as every setup ``raydog
    node-setup`` prints does, and a setup of one's own that writes it. Someone else's setup
    (yellowdog-ray's example, say) never writes it, so tasks must not wait for it."""
    return SETUP_FINISHED in userdata


def runs_raydog_setup(config: RayDogConfig, node_type: str) -> bool:
    """Whether nodes of this type run RayDog's node setup, so that their tasks (and the head's
    setup commands) wait for it: on a backend whose nodes run it (``runs_node_setup``), unless
    the type's boot script (``ComputeBackend.boot_setup``: its userdata) is not RayDog's."""
    if not runs_node_setup(config.compute):
        return False
    userdata = boot_setup(config, node_type)
    return userdata is None or is_raydog_setup(userdata)


def boot_setup(config: RayDogConfig, node_type: str) -> str | None:
    """What nodes of this type run as they boot (their userdata), where the compute backend
    can say (``ComputeBackend.boot_setup``); None otherwise."""
    compute = config.compute
    plugin = plugins.load("compute", compute.name, compute.paths[""])
    spec = config.node_types.get(node_type)
    boot = getattr(plugin, "boot_setup", None)
    return boot(spec.node_config) if spec is not None and boot is not None else None


def _wait_line(marker: str, seconds: int, waiting: str, expired: str, done: str) -> str:
    """One line of shell that holds until ``marker`` exists, for at most ``seconds``; then it
    says ``expired`` and exits 1."""
    return (
        f'if [ ! -e {marker} ]; then echo "{waiting}"; '
        f"raydog_deadline=$(( $(date +%s) + {seconds} )); "
        f"until [ -e {marker} ]; do "
        'if [ "$(date +%s)" -ge "$raydog_deadline" ]; then '
        f'echo "{expired}" >&2; exit 1; fi; sleep 1; done; echo "{done}"; fi'
    )


def wait_command(timeout_minutes: float, before: str = "starting this task") -> str:
    """One line of shell that holds until this node's setup has finished, for at most the
    limit; then it says why and exits 1, so nothing runs without Python or Ray. Task scripts
    start with it, and so does the head's setup command."""
    path = MARKER[1:-1]
    return _wait_line(
        MARKER,
        max(1, math.ceil(timeout_minutes * 60)),
        f"RayDog: waiting up to {timeout_minutes:g} minutes for this node's setup to finish "
        f"({path})",
        f"RayDog: this node's setup did not finish within {timeout_minutes:g} minutes "
        f"(no {path}; provider.node_setup_timeout_minutes): not {before}. "
        "See the node's setup (userdata) log.",
        f"RayDog: node setup finished; {before}",
    )


def task_wait(config: RayDogConfig, node_type: str, head: bool) -> str | None:
    """What the core puts first in the task script of a node that runs this setup
    (``runs_raydog_setup``): wait for it to finish; on a head that gets raydog as wheels, also
    for ``ray up`` to have installed them (it does so after syncing the cluster's files, before
    it starts Ray)."""
    if not runs_raydog_setup(config, node_type):
        return None
    minutes = config.setup_options.timeout_minutes
    lines = [
        "# Started by RayDog: wait for this node's setup (raydog node-setup) to finish",
        wait_command(minutes),
    ]
    if head and ships_wheels(config):
        lines += [
            "# ... and for `ray up` to install the client's RayDog here",
            _wait_line(
                INSTALLED,
                max(1, math.ceil(minutes * 60)),
                "RayDog: waiting for ray up to install RayDog on this head",
                f"RayDog: ray up did not install RayDog on this head within {minutes:g} minutes "
                f"(no {INSTALLED}; provider.node_setup_timeout_minutes): not starting this "
                "task. See the output of ray up.",
                "RayDog: installed; starting this task",
            ),
        ]
    lines += [
        "# The node setup's environment: its Python and Ray first on the PATH",
        f"if [ -f {PROFILE} ]; then . {PROFILE}; fi",
    ]
    return "\n".join(lines) + "\n"


def ships_wheels(config: RayDogConfig) -> bool:
    """Whether the head gets the client's raydog as wheels (see ``head_packages``): into the
    venv of RayDog's setup, so only on a head that runs it."""
    return config.setup_options.raydog_install == "wheel" and runs_raydog_setup(
        config, config.head_node_type
    )


def stage_head_wheels(config: RayDogConfig) -> list[Path]:
    """On the client: the head's wheels into the cluster's folder, before Ray syncs it (on
    every ``ray`` command, since Ray may reuse a cached bootstrap; cached wheels cost nothing)."""
    if config.on_head or not ships_wheels(config):
        return []
    return head_packages.stage(config.cluster_name, head_packages.distributions(config))


def head_setup_commands(config: RayDogConfig, commands: list[str]) -> list[str]:
    """Ray's ``head_setup_commands`` with RayDog's first: Ray runs them over SSH after syncing
    the cluster's files and before its start commands; they wait for the node's setup, then
    install the wheels that came with the files, offline, and say so for the head's task.
    A head whose setup is someone else's gets neither: its setup installs raydog itself."""
    if not runs_raydog_setup(config, config.head_node_type):
        return commands
    wheels_come = ships_wheels(config)
    before = "installing RayDog" if wheels_come else "starting Ray"
    ours = wait_command(config.setup_options.timeout_minutes, before)
    if wheels_come:
        name = shlex.quote(config.cluster_name)
        wheels = f"{state.REMOTE_HOME}/clusters/{name}/{head_packages.WHEELS}/*.whl"
        ours += (
            f"; {VENV}/bin/python -m pip install --quiet --disable-pip-version-check"
            f" --no-index --no-deps --force-reinstall {wheels}"
            f" && date > {INSTALLED}.tmp && mv -f {INSTALLED}.tmp {INSTALLED}"
        )
    return [ours, *(command for command in commands if command != ours)]


def public_key(auth: dict[str, object] | object) -> str | None:
    """The public half of ``auth.ssh_private_key``: its ``.pub`` file, or derived by ssh-keygen."""
    if not isinstance(auth, dict) or not auth.get("ssh_private_key"):
        return None
    private = Path(str(auth["ssh_private_key"])).expanduser()
    if not private.exists():
        raise ConfigError("auth.ssh_private_key", f"file not found: {private}")
    pub = private.with_name(private.name + ".pub")
    if pub.exists():
        return pub.read_text().strip()
    try:
        derived = subprocess.run(
            ["ssh-keygen", "-y", "-f", str(private)],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        raise ConfigError(
            "auth.ssh_private_key",
            f"cannot derive its public key (no {pub.name}, and ssh-keygen failed)",
        ) from None
    return derived.stdout.strip()


def common_setup(
    config: RayDogConfig, node_type: str, versions: Versions, user: str | None = None
) -> str:
    """Bash that installs uv, the client's Python and Ray into ``/opt/raydog/venv``, with what
    raydog needs on the head. It runs as root (perhaps without ``HOME``) and leaves everything
    the node's tasks and ``ray up`` run, as ``user``, readable by them (module docstring); the
    SSH key goes in first, so ``ray up`` can connect while the installs run."""
    if node_type not in config.node_types:
        raise ConfigError("--node-type", f"no node type {node_type!r}", config.node_types)
    is_head = node_type == config.head_node_type
    account = user or str(config.auth.get("ssh_user", "root"))
    key = public_key(dict(config.auth))
    lines = [
        "#!/usr/bin/env bash",
        f"{HEADER}cluster {config.cluster_name}, node type {node_type}"
        f" ({'head' if is_head else 'worker'}); pinned to the client's {versions}",
        "set -euo pipefail",
        "",
        end_marker(f"{versions}"),
        *_root_environment(account),
    ]
    if key:
        lines += ["", *_ssh_access(account, key)]
    lines += ["", *_installs(config, is_head, versions)]
    if is_head and config.setup_options.raydog_install == "wheel":
        lines += [f"# `ray up` installs the wheels as {account}, over SSH", f"rm -f {INSTALLED}"]
        if account != "root":
            lines.append(f"chown -R {shlex.quote(account)} {VENV}")
    return "\n".join(lines) + "\n"


def _root_environment(account: str) -> list[str]:
    """What the installs run with: files every user can read, uv's folders out of root's home,
    bytecode compiled as root.

    The tasks' user (YellowDog's yd-agent) cannot write ``__pycache__`` in these folders, so
    without it each Python process Ray starts compiles what it imports, each time: Ray's
    dashboard agent imported 3x slower (0.95 s to 2.96 s on a 2-core machine), and the raylet
    aborts a node's start when that agent has not reported its ports within 15 s ("Timed out
    waiting for file ... metrics_agent_port_..."). ``uv pip install`` compiles what it installs
    (``UV_COMPILE_BYTECODE``); uv's Python downloads carry no bytecode for their standard
    library (astral-sh/uv issue 16408), compiled by ``_installs``."""
    return [
        f"# This runs as root at boot, perhaps without HOME; the node's tasks and `ray up` run as"
        f"\n# {account}: what they run lives in {ROOT}, readable by every user, and so do uv's"
        "\n# Pythons and cache (by default in root's home, which other users cannot enter).",
        "umask 022",
        f"export UV_PYTHON_INSTALL_DIR={PYTHONS} UV_CACHE_DIR={UV_CACHE} UV_NO_MODIFY_PATH=1",
        "# Bytecode compiled now, as root: the tasks' user cannot write it into these folders,"
        "\n# and every Python process Ray starts would compile what it imports, each time.",
        "export UV_COMPILE_BYTECODE=1",
    ]


def _ssh_access(account: str, key: str) -> list[str]:
    """``auth.ssh_private_key``'s public key in ``account``'s ``authorized_keys``, once."""
    return [
        "# SSH access for Ray's CLI (ray up, ray exec), first: `ray up` may connect long before"
        "\n# the installs below end (it then waits for this setup). The key of"
        " auth.ssh_private_key.",
        f"RAYDOG_USER={shlex.quote(account)}",
        'RAYDOG_HOME_DIR=$(getent passwd "$RAYDOG_USER" | cut -d: -f6) || {',
        '  echo "RayDog: no user $RAYDOG_USER on this node (auth.ssh_user)" >&2; exit 1; }',
        'install -d -m 700 -o "$RAYDOG_USER" "$RAYDOG_HOME_DIR/.ssh"',
        f'grep -qxF {shlex.quote(key)} "$RAYDOG_HOME_DIR/.ssh/authorized_keys" 2>/dev/null'
        f' || echo {shlex.quote(key)} >> "$RAYDOG_HOME_DIR/.ssh/authorized_keys"',
        'chown "$RAYDOG_USER" "$RAYDOG_HOME_DIR/.ssh/authorized_keys"',
        'chmod 600 "$RAYDOG_HOME_DIR/.ssh/authorized_keys"',
    ]


def _installs(config: RayDogConfig, is_head: bool, versions: Versions) -> list[str]:
    """uv, the client's Python and the venv's packages, readable and on every user's PATH."""
    packages, what = _packages(config, is_head, versions)
    return [
        "# uv, which installs Python and the packages below",
        "if ! command -v uv >/dev/null; then",
        "  curl -LsSf https://astral.sh/uv/install.sh | env UV_INSTALL_DIR=/usr/local/bin sh",
        "fi",
        "",
        what + ".\n# Ray needs the same versions of Python and Ray on the client and every node.",
        f"uv venv {'--seed ' if is_head else ''}--python {versions.python} {VENV}",
        f"uv pip install --python {VENV}/bin/python {' '.join(map(shlex.quote, packages))}",
        "# Every user runs this Python (uv may have used the image's own instead); uv's own"
        "\n# download comes without bytecode for its standard library (an image's Python has it).",
        f"if [ -d {PYTHONS} ]; then",
        f"  {VENV}/bin/python -m compileall -q -j 0 -x '/(test|tests|idle_test)/' {PYTHONS} \\",
        "    || echo \"RayDog: part of Python's standard library did not compile; Python compiles"
        ' it as it imports it" >&2',
        f"  chmod -R a+rX {PYTHONS}",
        "fi",
        f"ln -sf {VENV}/bin/ray {f'{VENV}/bin/raydog ' if is_head else ''}/usr/local/bin/",
        f"echo 'export PATH={VENV}/bin:$PATH' > {PROFILE}",
        f". {PROFILE}  # the rest of this setup, and what a backend appends to it, use them too",
    ]


def _packages(config: RayDogConfig, is_head: bool, versions: Versions) -> tuple[list[str], str]:
    """The venv's requirements, and the comment that says what they are: Ray on every node;
    on the head, raydog (from the index) or what the client's wheels need (``ray up`` brings
    the wheels)."""
    packages = [f"ray[default]=={versions.ray}"]
    what = f"# Python {versions.python}, Ray {versions.ray}"
    if not is_head:
        return packages, what + " (workers need no raydog)"
    names = head_packages.distributions(config)
    if config.setup_options.raydog_install == "index":
        packages += [f"raydog[head]=={versions.raydog}"]
        packages += [f"{name}=={metadata.version(name)}" for name in names[1:]]
        return packages, what + (
            f", raydog {versions.raydog} from the package index (raydog_install: index)"
        )
    listed = ", ".join(names)
    return packages + head_packages.requirements(names), what + (
        f" and what {listed} need. The client's own {listed} come as wheels"
        "\n# with the cluster's files; `ray up` installs them before it starts Ray"
    )


HEADER = "# RayDog node setup: "
_HEADER_LINE = re.compile(
    rf"^{re.escape(HEADER)}cluster \S+, node type \S+ \((head|worker)\); "
    r"pinned to the client's (.*)$",
    re.MULTILINE,
)
END_HOOK = "trap raydog_setup_finished EXIT"
"""The line of ``end_marker`` that makes the setup write its marker when it has succeeded."""


@dataclass(frozen=True)
class WrittenFor:
    """What a setup ``raydog node-setup`` printed was made for (its first comment says)."""

    head: bool
    versions: Versions


def written_for(userdata: str) -> WrittenFor | None:
    """What ``raydog node-setup`` made this setup for; None for a setup it did not print."""
    match = _HEADER_LINE.search(userdata)
    if match is None:
        return None
    return WrittenFor(head=match.group(1) == "head", versions=Versions.parse(match.group(2)))


def end_marker(note: str) -> str:
    """Bash that marks the end of the script it starts: the marker goes away now and is written
    (atomically) when the whole script has succeeded, so whatever a backend appends to the
    setup (``extra_userdata``, the tag store's install) finishes before any task starts."""
    return (
        "# Tasks wait for this marker: removed now, written when this whole script succeeds\n"
        f"raydog_marker={MARKER}\n"
        'rm -f "$raydog_marker"\n'
        "raydog_setup_finished() {\n"
        "  raydog_status=$?\n"
        '  if [ "$raydog_status" -ne 0 ]; then\n'
        '    echo "RayDog: node setup failed (exit $raydog_status); no task will start here" >&2\n'
        "    return\n"
        "  fi\n"
        '  mkdir -p "$(dirname "$raydog_marker")"\n'
        f'  echo {shlex.quote(note)} "finished $(date -u +%Y-%m-%dT%H:%M:%SZ)"'
        ' > "$raydog_marker.tmp"\n'
        '  mv -f "$raydog_marker.tmp" "$raydog_marker"\n'
        '  echo "RayDog: node setup finished ($raydog_marker)"\n'
        "}\n"
        f"{END_HOOK}\n"
    )
