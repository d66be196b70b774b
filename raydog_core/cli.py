"""The ``raydog`` command: look at plugins, check a config, rehearse autoscaling."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from raydog_core import config as raydog_config
from raydog_core import plugins
from raydog_core.errors import RayDogError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raydog", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("plugins", help="every installed plugin, by kind, with its distribution")

    validate = commands.add_parser(
        "validate", help="check a cluster YAML without credentials or network"
    )
    validate.add_argument("config", type=Path)

    simulate = commands.add_parser(
        "simulate",
        help="run Ray's autoscaler on a config against in-memory backends, in simulated time",
    )
    simulate.add_argument("config", type=Path)
    simulate.add_argument(
        "--demand",
        action="append",
        default=[],
        metavar="SPEC",
        help="e.g. '8 CPU for 10m', '4 CPU from 5m to 20m', '2 GPU for 1h' (repeatable)",
    )
    simulate.add_argument(
        "--duration", default="", help="how long to simulate (default: demand + 15m)"
    )
    simulate.add_argument("--launch-delay", default="30s", help="how long a node takes to start")
    simulate.add_argument("--tick", default="5s", help="autoscaler update interval")

    args = parser.parse_args(argv)
    try:
        if args.command == "plugins":
            return _plugins()
        if args.command == "validate":
            return _validate(args.config)
        if args.command == "simulate":
            return _simulate(args)
    except RayDogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2


def _plugins() -> int:
    for kind in plugins.GROUPS:
        print(f"{kind} ({plugins.GROUPS[kind]}):")
        for info in plugins.installed(kind):
            default = "  (default)" if raydog_config.DEFAULT_PLUGINS[kind] == info.name else ""
            print(f"  {info.name:<12} {info.distribution:<16} {info.target}{default}")
    return 0


def _validate(path: Path) -> int:
    parsed = raydog_config.validate(raydog_config.load_file(path), path.resolve().parent)
    print(
        f"{path}: valid. cluster {parsed.cluster_name!r}: compute={parsed.compute.name}, "
        f"tag_store={parsed.tag_store.name}, transport={parsed.transport.name}, "
        f"node types: {', '.join(parsed.node_types)}"
    )
    return 0


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


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


def _simulate(args: argparse.Namespace) -> int:
    from raydog_core.simulation import Demand, Simulation

    cluster = raydog_config.load_file(args.config)
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
        config_dir=args.config.resolve().parent,
    )
    try:
        timeline = simulation.run(typed, duration)
    finally:
        simulation.close()
    print(f"Simulated {duration / 60:.0f} minutes of {args.config} (tick {args.tick}):")
    print(timeline.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
