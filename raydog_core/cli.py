"""The ``raydog`` command: look at plugins, check a config, rehearse autoscaling."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from raydog_core import (
    cluster_plugins,
    config_model,
    config_parsing,
    file_references,
    plugins,
    ray_nodes,
    starter,
    user_input,
    validation,
    why,
)
from raydog_core import config as raydog_config
from raydog_core.errors import ConfigErrors, RayDogError
from raydog_core.interfaces import (
    Check,
    ComputeBackend,
    Fleet,
    FleetCluster,
    NodeInfo,
    NodeState,
    offers_fleet,
    offers_smoke_test,
)

if TYPE_CHECKING:
    from raydog_core.provider import RayDogNodeProvider

    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raydog", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    # Each `_add_*` stands beside its command's handler; this order is `raydog --help`'s.
    for add_command in (
        _add_plugins,
        _add_validate,
        _add_simulate,
        _add_init,
        _add_node_setup,
        _add_doctor,
        _add_status,
        _add_metrics,
        _add_clusters,
        _add_shutdown,
        _add_smoke_test,
    ):
        add_command(commands)
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except ConfigErrors as exc:
        for error in exc.errors:
            print(f"error: {error}", file=sys.stderr)
        print(f"{len(exc.errors)} problems found", file=sys.stderr)
        return 2
    except RayDogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _add_plugins(commands: Subcommands) -> None:
    command = commands.add_parser(
        "plugins", help="every installed plugin, by kind, with its distribution"
    )
    command.set_defaults(run=lambda args: _plugins())


def _plugins() -> int:
    found = {kind: plugins.installed(kind) for kind in plugins.GROUPS}
    every = [info for infos in found.values() for info in infos]
    name_width = max((len(info.name) for info in every), default=0) + 2
    dist_width = max((len(info.distribution) for info in every), default=0) + 2
    for kind, infos in found.items():
        print(f"{kind} ({plugins.GROUPS[kind]}):")
        for info in infos:
            default = "  (default)" if config_model.DEFAULT_PLUGINS[kind] == info.name else ""
            print(
                f"  {info.name:<{name_width}}{info.distribution:<{dist_width}}"
                f"{info.target}{default}"
            )
        print()
    return 0


def _add_validate(commands: Subcommands) -> None:
    command = commands.add_parser(
        "validate", help="check a cluster YAML without credentials or network"
    )
    command.add_argument("config", type=Path)
    command.set_defaults(run=lambda args: _validate(args.config))


def _validate(path: Path) -> int:
    cluster = validation.load_file(path)
    parsed = validation.validate(cluster, for_launch=True)
    for note in validation.notes(cluster, parsed):
        print(f"note: {note}")
    print(
        f"{path}: valid. cluster {parsed.cluster_name!r}: compute={parsed.compute.name}, "
        f"tag_store={parsed.tag_store.name}, transport={parsed.transport.name}, "
        f"node types: {', '.join(parsed.node_types)}"
    )
    return 0


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
# `doctor` and `status` wait this long for the tag store (a tunnel to open, the first read).
STORE_WAIT_SECONDS = 30.0


def parse_duration(text: str, what: str = "duration") -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise RayDogError(f"{what}: expected a time like 30s, 10m or 1h, got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def parse_demand(text: str) -> object:
    """'8 CPU for 10m' | '4 CPU from 5m to 20m' | '2 GPU' (until the end)."""
    from raydog_core.simulation import Demand

    match = re.fullmatch(
        r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z_][\w-]*)"
        r"(?:\s+for\s+(\S+)|\s+from\s+(\S+)\s+to\s+(\S+)|\s+from\s+(\S+))?\s*",
        text,
    )
    if not match:
        raise RayDogError(
            f"--demand: expected e.g. '8 CPU for 10m' or '4 CPU from 5m to 20m', got {text!r}"
        )
    amount, resource, lasting, start, end, open_start = match.groups()
    begin = parse_duration(start or open_start or "0", "--demand")
    finish = (
        begin + parse_duration(lasting, "--demand")
        if lasting
        else parse_duration(end, "--demand")
        if end
        else float("inf")
    )
    total = float(amount)
    if resource == "CPU":
        return Demand(start_s=begin, end_s=finish, cpus=total)
    return Demand(start_s=begin, end_s=finish, resources={resource: 1.0}, count=int(total))


def _add_simulate(commands: Subcommands) -> None:
    command = commands.add_parser(
        "simulate",
        help="run Ray's autoscaler on a config against in-memory backends, in simulated time",
    )
    command.add_argument("config", type=Path)
    command.add_argument(
        "--demand",
        action="append",
        default=[],
        metavar="SPEC",
        help="e.g. '8 CPU for 10m', '4 CPU from 5m to 20m', '2 GPU for 1h' (repeatable)",
    )
    command.add_argument(
        "--duration", default="", help="how long to simulate (default: demand + 15m)"
    )
    command.add_argument("--launch-delay", default="30s", help="how long a node takes to start")
    command.add_argument("--tick", default="5s", help="autoscaler update interval")
    command.add_argument(
        "--json", action="store_true", help="print the figures, series and events as JSON"
    )
    command.add_argument("--events", action="store_true", help="also list every launch and stop")
    command.add_argument(
        "--unavailable",
        action="append",
        default=[],
        metavar="TYPE[=REASON]",
        help="the platform ends every launch of this worker node type before it runs (repeatable)",
    )
    command.set_defaults(run=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    from raydog_core.simulation import Demand, Simulation

    cluster = validation.load_file(args.config)
    demand = [parse_demand(text) for text in args.demand]
    if not demand:
        raise RayDogError("--demand: give at least one, e.g. --demand '8 CPU for 10m'")
    typed = [d for d in demand if isinstance(d, Demand)]
    ends = [d.end_s for d in typed if d.end_s != float("inf")] + [d.start_s for d in typed]
    duration = parse_duration(args.duration, "--duration") if args.duration else max(ends) + 15 * 60
    simulation = Simulation(
        cluster,
        tick_s=parse_duration(args.tick, "--tick"),
        launch_delay_s=parse_duration(args.launch_delay, "--launch-delay"),
        unavailable=dict(_unavailable(text) for text in args.unavailable),
    )
    try:
        timeline = simulation.run(typed, duration)
    finally:
        simulation.close()
    if args.json:
        print(json.dumps({"config": str(args.config), **timeline.summary()}, indent=2))
        return 0
    print(f"Simulated {duration / 60:.0f} minutes of {args.config} (tick {args.tick}):")
    width = min(shutil.get_terminal_size((100, 24)).columns, 120)
    print(timeline.chart(width=width, colors=sys.stdout.isatty()))
    if args.events:
        print(timeline.format_events())
    print(timeline.format_figures())
    return 0


def _unavailable(text: str) -> tuple[str, str]:
    """``TYPE[=REASON]`` of ``--unavailable``."""
    node_type, _, reason = text.partition("=")
    if not node_type.strip():
        raise RayDogError(f"--unavailable: expected TYPE[=REASON], got {text!r}")
    return node_type.strip(), reason.strip() or "simulated: the platform cannot provision it"


def _add_metrics(commands: Subcommands) -> None:
    command = commands.add_parser(
        "metrics", help="the provider's figures (Prometheus text) from the running cluster's head"
    )
    command.add_argument("config", type=Path)
    command.set_defaults(run=lambda args: _metrics(args.config))


def _metrics(path: Path) -> int:
    """Read the autoscaler's metrics endpoint on the head (where the provider adds its
    figures) through Ray's command runner, and print RayDog's."""
    from ray.autoscaler import sdk
    from ray.autoscaler._private.constants import AUTOSCALER_METRIC_PORT

    validation.validate(validation.load_file(path))
    # Ray's monitor reads its port from AUTOSCALER_METRIC_PORT (ray/autoscaler/_private/
    # constants.py); backends whose heads share a machine set it per head, in the node's
    # environment that Ray's command runner gives this command too.
    fetch = (
        "python -c 'import os, urllib.request; port = os.environ.get("
        f'"AUTOSCALER_METRIC_PORT", "{AUTOSCALER_METRIC_PORT}"); '
        'print(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30)'
        ".read().decode())'"
    )
    # Ray's command runner logs to stdout: keep stdout for the figures alone.
    with contextlib.redirect_stdout(sys.stderr):
        output = sdk.run_on_cluster(str(path), cmd=fetch, with_output=True) or ""
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    figures = [
        line
        for line in text.splitlines()
        if line.startswith(("raydog_", "# TYPE raydog_", "# HELP raydog_"))
    ]
    if not figures:
        raise RayDogError(
            f"no RayDog figures on the head's autoscaler metrics port {AUTOSCALER_METRIC_PORT}"
        )
    print("\n".join(figures))
    return 0


def _open_cluster(path: Path) -> tuple[config_model.RayDogConfig, RayDogNodeProvider]:
    """The provider a `ray` command would build for this YAML (validated first)."""
    from raydog_core.provider import RayDogNodeProvider

    cluster = validation.load_file(path)
    parsed = validation.validate(cluster)
    bootstrapped = raydog_config.bootstrap(cluster)
    provider = RayDogNodeProvider(bootstrapped["provider"], parsed.cluster_name)
    return parsed, provider


def _add_node_setup(commands: Subcommands) -> None:
    command = commands.add_parser(
        "node-setup", help="print the setup script (userdata) a node of a type needs"
    )
    command.add_argument("config", type=Path)
    command.add_argument("--node-type", required=True)
    command.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="write it to FILE (all of it or, on any error, nothing) instead of printing it",
    )
    command.set_defaults(run=lambda args: _node_setup(args.config, args.node_type, args.output))


def _node_setup(path: Path, node_type: str, output: Path | None) -> int:
    text = node_setup_text(validation.load_file(path), node_type)
    if output is None:
        print(text, end="")
        return 0
    write_atomically(output, text)
    print(f"wrote {output} (the setup of node type {node_type})", file=sys.stderr)
    return 0


def write_atomically(target: Path, text: str) -> None:
    """All of ``text`` at ``target``, or the file as it was: written beside it, then renamed
    over it (a shell's ``> FILE`` empties the file before the command has even started)."""
    try:
        descriptor, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
        )
    except OSError as exc:
        raise RayDogError(f"cannot write {target}: {exc.strerror}") from None
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.chmod(temporary, 0o644)  # a script for the node's userdata: no secret in it
        os.replace(temporary, target)
    except BaseException as exc:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise RayDogError(f"cannot write {target}: {exc.strerror}") from None
        raise


def node_setup_text(cluster: Mapping[str, object], node_type: str, with_key: bool = True) -> str:
    """What ``raydog node-setup`` prints; ``with_key=False`` leaves out the SSH key (``init``
    writes node setup before the user has made the key)."""
    from raydog_core.node_setup import Versions, common_setup

    resolved = file_references.resolve_files(cluster, missing_ok=True)
    parsed = config_parsing.parse(resolved)
    if not with_key:
        auth = {k: v for k, v in parsed.auth.items() if k != "ssh_private_key"}
        parsed = dataclasses.replace(parsed, auth=auth)
    with raydog_config.scratch_home():
        _, _, compute = cluster_plugins.build_plugins(parsed)
    common = common_setup(parsed, node_type, Versions.of_this_client())
    text: str = compute.node_setup_script(node_type, common)
    return text


def _add_init(commands: Subcommands) -> None:
    command = commands.add_parser(
        "init", help="write a starter cluster config (and, for YellowDog, node setup and .env)"
    )
    command.add_argument("--compute", choices=starter.COMPUTES, default=starter.COMPUTES[0])
    command.add_argument("folder", type=Path, nargs="?", default=Path("."))
    command.set_defaults(run=lambda args: _init(args.compute, args.folder))


def _init(compute: str, folder: Path) -> int:
    files = starter.planned_files(compute)
    starter.refuse_overwrites(folder, list(files))
    folder.mkdir(parents=True, exist_ok=True)
    config_text = files["cluster.yaml"] or ""
    cluster = user_input.load_yaml(config_text, "cluster.yaml")
    key = Path(str(cluster.get("auth", {}).get("ssh_private_key", ""))).expanduser()
    written = []
    for name, text in files.items():
        if text is None:
            node_type = next(t for t, f in starter.NODE_SETUP_FILES.items() if f == name)
            text = node_setup_text(cluster, node_type, with_key=key.is_file())
        target = folder / name
        # Exclusive creation: a file that appeared since the check is not overwritten either.
        with open(target, "x") as handle:
            handle.write(text)
        if name == ".env":
            target.chmod(0o600)
        written.append(name)
    print(f"wrote {', '.join(written)} in {folder}")
    if any(text is None for text in files.values()) and not key.is_file():
        again = "; ".join(
            f"raydog node-setup cluster.yaml --node-type {node_type} -o {name}"
            for node_type, name in starter.NODE_SETUP_FILES.items()
        )
        print(
            f"note: {key} does not exist yet, so the node setup gives no SSH access; make it "
            f"(`mkdir -p -m 700 {key.parent} && ssh-keygen -t ed25519 -N '' -f {key}`), then "
            f"write the node setup again: {again}"
        )
    print(f"next: cd {folder} && raydog validate cluster.yaml  (then edit cluster.yaml)")
    return 0


def _add_doctor(commands: Subcommands) -> None:
    command = commands.add_parser("doctor", help="check what commonly breaks a real `ray up`")
    command.add_argument("config", type=Path)
    command.set_defaults(run=lambda args: _doctor(args.config))


def _doctor(path: Path) -> int:
    from raydog_core.node_setup import VERSIONS_TAG, Versions

    checks: list[Check] = []

    def show(check: Check) -> None:
        checks.append(check)
        mark = "PASS" if check.ok else "FAIL"
        line = f"{mark}  {check.name}: {check.detail}"
        if not check.ok and check.fix:
            line += f"\n      fix: {check.fix}"
        print(line, flush=True)

    try:
        parsed, provider = _open_cluster(path)
    except RayDogError as exc:
        show(Check("config", False, str(exc), f"raydog validate {path}"))
        return 1
    show(
        Check(
            "config",
            True,
            f"valid ({parsed.compute.name}, {parsed.tag_store.name}, {parsed.transport.name})",
        )
    )
    show(_key_check(parsed.auth))
    for check in provider.compute.preflight():
        show(check)
    client = Versions.of_this_client()
    try:
        heads = provider.non_terminated_nodes({"ray-node-type": "head"})
    except RayDogError as exc:
        show(Check("head", False, str(exc)))
        return 1
    if not heads:
        show(Check("head", True, f"no head running; `ray up {path}` starts one"))
        show(Check("versions", True, f"client {client}; `raydog node-setup` pins nodes to it"))
    else:
        head = heads[0]
        running = provider.is_running(head)
        show(
            Check(
                "head",
                running,
                f"{head} at {provider.external_ip(head)}",
                "wait for it, or see the compute backend's logs for the head task",
            )
        )
        reached = provider.tags.refresh(timeout=STORE_WAIT_SECONDS)
        where = "on the head" if provider.store.head_port else "external"
        show(
            Check(
                "tag store",
                reached,
                f"{parsed.tag_store.name} ({where})",
                "is the head's tag server running? see ~/.raydog/clusters/"
                f"{parsed.cluster_name}/ on the head",
            )
        )
        reported = provider.node_tags(head).get(VERSIONS_TAG)
        if reported is None:
            show(Check("versions", True, f"client {client}; the head has not reported yet"))
        else:
            node = Versions.parse(reported)
            same = (node.python, node.ray) == (client.python, client.ray)
            show(
                Check(
                    "versions",
                    same,
                    f"client {client}, head {node}",
                    "rebuild the nodes with `raydog node-setup`, or match the client's "
                    "Python and Ray to the head's",
                )
            )
    provider.close()
    failed = [c for c in checks if not c.ok]
    print(f"{len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _key_check(auth: Mapping[str, object]) -> Check:

    key = auth.get("ssh_private_key")
    if not key:
        return Check("ssh key", True, "none configured (needed only for SSH to the head)")
    path = Path(str(key)).expanduser()
    if not path.exists():
        return Check("ssh key", False, f"{path} not found", "fix auth.ssh_private_key")
    if path.stat().st_mode & 0o077:
        return Check("ssh key", False, f"{path} is readable by others", f"chmod 600 {path}")
    return Check("ssh key", True, f"{path} present, mode 600")


def _add_status(commands: Subcommands) -> None:
    command = commands.add_parser(
        "status", help="the cluster's nodes as the compute backend and the tag store see them"
    )
    command.add_argument("config", type=Path)
    command.add_argument(
        "--why",
        action="store_true",
        help="per node type with waiting or failed nodes: how far each got, and where it stopped",
    )
    command.set_defaults(run=lambda args: _status(args.config, args.why))


def _status(path: Path, explain: bool = False) -> int:

    parsed, provider = _open_cluster(path)
    # Look only: ended nodes stay listed, with what the backend says of them.
    provider.refresh(reconcile=False)
    provider.tags.refresh(timeout=STORE_WAIT_SECONDS)
    described = provider.snapshot()
    stored = provider.tags.all()
    where = "reachable" if provider.tags.connected else "not reachable"
    print(
        f"cluster {parsed.cluster_name}: {parsed.compute.name} compute, "
        f"{parsed.tag_store.name} tag store ({where})"
    )
    print(
        f"{'node':<44} {'type':<14} {'kind':<7} {'compute':<11} {'ray status':<16} "
        f"{'internal ip':<15} external ip"
    )
    for node_id in sorted(described.keys() | stored.keys()):
        info = described.get(node_id)
        tags = provider.node_tags(node_id) if info else stored[node_id]
        state = info.state.value if info else "unknown"
        if info is not None and info.state is NodeState.TERMINATED and info.detail:
            state += f" ({info.detail})"
        print(
            f"{node_id:<44} {tags.get('ray-user-node-type', '?'):<14} "
            f"{tags.get('ray-node-type', '?'):<7} {state:<11} "
            f"{tags.get('ray-node-status', '-'):<16} "
            f"{(info.internal_ip if info else None) or '-':<15} "
            f"{(info.external_ip if info else None) or '-'}"
        )
        if info is None:
            print("    (tags only: the compute backend no longer has this node)")
        elif node_id not in stored and provider.tags.connected:
            print("    (no tags in the store: shown from the compute backend's facts)")
    if not described and not stored:
        print("no nodes")
    if explain:
        print("\n".join(_why(path, provider, described, stored)))
    provider.close()
    return 0


def _why(
    path: Path,
    provider: RayDogNodeProvider,
    described: Mapping[str, NodeInfo],
    stored: Mapping[str, Mapping[str, str]],
) -> list[str]:
    """``raydog status --why``: the chains (raydog_core.why), with Ray's view read on the head
    when some node of a worker type is running but may not have joined."""
    heads = [i.node_id for i in described.values() if i.is_head and i.state is NodeState.RUNNING]
    failures = why.decode_failures(
        stored.get(heads[0], {}).get(why.FAILURES_TAG) if heads else None,
        time.time(),
        provider.raydog_config.launch_failure_memory,
    )
    # Only a node the platform runs can have joined Ray: ask the head's Ray only then.
    running = any(not i.is_head and i.state is NodeState.RUNNING for i in described.values())
    joined: dict[str, float] | None = {}
    if running:
        joined = _ray_nodes_on_head(path) if heads else None
    return why.why_lines(described, stored, joined, failures)


def _ray_nodes_on_head(path: Path) -> dict[str, float] | None:
    """Ray's live nodes as the head's GCS lists them, read on the head through Ray's command
    runner (as ``raydog metrics`` reads its figures); None when the head does not answer."""
    import click
    from ray.autoscaler import sdk
    from ray.autoscaler._private.subprocess_output_util import ProcessRunnerError

    try:
        # Ray's command runner logs to stdout: keep stdout for the report alone.
        with contextlib.redirect_stdout(sys.stderr):
            output = sdk.run_on_cluster(
                str(path), cmd="python -m raydog_core.ray_nodes", with_output=True
            )
    except (
        RayDogError,
        RuntimeError,
        OSError,
        subprocess.SubprocessError,
        ProcessRunnerError,
        click.ClickException,
    ) as exc:
        print(f"raydog status --why: the head's Ray did not answer: {exc}", file=sys.stderr)
        return None
    text = output.decode(errors="replace") if isinstance(output, bytes) else output or ""
    return ray_nodes.parse(text)


RECORD_VERSION = 1
MAX_DEADLINE_MINUTES = 120.0


def _add_smoke_test(commands: Subcommands) -> None:
    command = commands.add_parser(
        "smoke-test",
        help="with real credentials: one small node, each platform fact RayDog relies on "
        "measured against the emulator's, everything ended before the deadline",
    )
    command.add_argument("config", type=Path)
    command.add_argument(
        "--record", type=Path, metavar="FILE", help="write the answers (no ids, names or secrets)"
    )
    command.add_argument(
        "--deadline", type=float, default=15.0, metavar="MINUTES", help="default: 15"
    )
    command.set_defaults(run=lambda args: _smoke_test(args.config, args.record, args.deadline))


def _smoke_test(path: Path, record: Path | None, deadline_minutes: float) -> int:
    if not 0 < deadline_minutes <= MAX_DEADLINE_MINUTES:
        raise RayDogError(
            f"--deadline: 0 to {MAX_DEADLINE_MINUTES:g} minutes, got {deadline_minutes:g}"
        )
    parsed = validation.validate(validation.load_file(path))  # no SSH: no key needed
    _, _, compute = cluster_plugins.build_plugins(parsed)
    if not offers_smoke_test(compute):
        raise RayDogError(
            f"the {parsed.compute.name} compute backend has no smoke test "
            "(it does not implement ComputeBackend.smoke_test)"
        )
    answers = compute.smoke_test(deadline_minutes * 60, lambda line: print(line, flush=True))
    width = max(len(a.fact) for a in answers) + 2
    print(f"{'fact':<{width}}{'emulator':<22}{'platform':<40}agree")
    for answer in answers:
        agree = ("yes" if answer.agrees else "NO") if answer.compared else "-"
        print(f"{answer.fact:<{width}}{answer.emulator or '-':<22}{answer.platform:<40}{agree}")
    if record is not None:
        document = {
            "raydog_smoke_test": RECORD_VERSION,
            "compute": parsed.compute.name,
            "answers": {answer.fact: answer.platform for answer in answers},
        }
        write_atomically(record, json.dumps(document, indent=2) + "\n")
        print(f"recorded in {record}")
    differ = [answer.fact for answer in answers if not answer.agrees]
    if differ:
        print(f"the emulator differs from the platform on: {', '.join(differ)}")
        return 1
    print("the emulator agrees with the platform on every fact")
    return 0


NEARBY_CONFIG = Path("cluster.yaml")
"""The config the fleet commands take their backend and its options from, when it exists."""


def _add_fleet_options(command: argparse.ArgumentParser) -> None:
    """What `clusters` and `shutdown` both take: which backend's fleet, and where in it."""
    command.add_argument(
        "--namespace",
        help="where to look (default: the config next to you, else the backend's)",
    )
    command.add_argument(
        "--compute",
        help="the compute backend (default: the one of ./cluster.yaml, else "
        f"{config_model.DEFAULT_PLUGINS['compute']})",
    )


def _open_fleet(namespace: str | None, compute: str | None) -> Fleet:
    """The fleet of the backend asked for (or ./cluster.yaml's), with that config's options."""
    options: Mapping[str, object] = {}
    name = compute
    if NEARBY_CONFIG.is_file():
        parsed = config_parsing.parse(validation.load_file(NEARBY_CONFIG))
        if name is None or name == parsed.compute.name:
            name, options = parsed.compute.name, parsed.compute.options
    name = name or config_model.DEFAULT_PLUGINS["compute"]
    backend: type[ComputeBackend] = plugins.load("compute", name, "--compute")
    if not offers_fleet(backend):
        raise RayDogError(
            f"the {name} compute backend cannot list or end clusters without their config "
            "(it does not implement ComputeBackend.fleet)"
        )
    return backend.fleet(namespace, options)


def _age(seconds: float) -> str:
    minutes = int(max(seconds, 0) // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def _cluster_lines(cluster: FleetCluster, now: float) -> list[str]:
    nodes = ", ".join(
        f"{node_type}: " + " ".join(f"{count} {state}" for state, count in sorted(states.items()))
        for node_type, states in sorted(cluster.nodes.items())
    )
    age = _age(now - cluster.started) if cluster.started is not None else "?"
    left = _age(cluster.ends - now) if cluster.ends is not None else "-"
    lines = [
        f"{cluster.name}  {cluster.state}  head {cluster.head_address or '-'}  age {age}  "
        f"lifetime left {left}",
        f"    nodes: {nodes or 'none'}",
    ]
    lines += [f"    costs: {item}" for item in cluster.billable]
    return lines


def _add_clusters(commands: Subcommands) -> None:
    command = commands.add_parser(
        "clusters", help="every RayDog cluster a compute backend can see, without a config"
    )
    _add_fleet_options(command)
    command.add_argument("--json", action="store_true", help="the same, as one JSON document")
    command.set_defaults(run=_clusters)


def _clusters(args: argparse.Namespace) -> int:
    import time

    fleet = _open_fleet(args.namespace, args.compute)
    try:
        found = sorted(fleet.clusters(), key=lambda cluster: cluster.name)
    finally:
        fleet.close()
    if args.json:
        document = {"where": fleet.where, "clusters": [dataclasses.asdict(c) for c in found]}
        print(json.dumps(document, indent=2))
        return 0
    now = time.time()
    print(f"{len(found)} cluster(s) in {fleet.where}")
    for cluster in found:
        print("\n".join(_cluster_lines(cluster, now)))
    return 0


def _add_shutdown(commands: Subcommands) -> None:
    command = commands.add_parser(
        "shutdown", help="end a cluster, or every failed run's leftovers, without its config"
    )
    command.add_argument("name", nargs="?", help="the cluster, as `raydog clusters` names it")
    command.add_argument(
        "--leftovers", action="store_true", help="end every cluster whose head is not alive"
    )
    _add_fleet_options(command)
    command.add_argument("--yes", action="store_true", help="do not ask")
    command.set_defaults(run=_shutdown)


def _shutdown(args: argparse.Namespace) -> int:
    import time

    if bool(args.name) == bool(args.leftovers):
        raise RayDogError("raydog shutdown: give a cluster's NAME or --leftovers (one of them)")
    fleet = _open_fleet(args.namespace, args.compute)
    try:
        found = fleet.clusters()
        if args.leftovers:
            chosen = [c for c in found if c.state == "leftovers"]
        else:
            chosen = [c for c in found if c.name == args.name]
            if not chosen:
                print(f"nothing to end: no cluster {args.name!r} in {fleet.where}")
                return 0
        if not chosen:
            print(f"nothing to end: no leftovers in {fleet.where}")
            return 0
        now = time.time()
        print(f"to end in {fleet.where}:")
        for cluster in chosen:
            print("\n".join(_cluster_lines(cluster, now)))
        if not args.yes and input("end them? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing ended")
            return 1
        for cluster in chosen:
            ended = fleet.shutdown(cluster.name)
            print(f"ended {cluster.name}: {', '.join(ended) or 'nothing was left'}")
    finally:
        fleet.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
