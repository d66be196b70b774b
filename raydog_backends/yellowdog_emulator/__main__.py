"""``python -m raydog_backends.yellowdog_emulator --port PORT``: serve until SIGTERM or Ctrl-C.

``python -m raydog_backends.yellowdog.emulator`` is an alias of this command.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from raydog_backends.yellowdog_emulator.records import EmulatorConfig
from raydog_backends.yellowdog_emulator.server import Emulator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = EmulatorConfig()
    parser = argparse.ArgumentParser(
        prog="python -m raydog_backends.yellowdog_emulator",
        description="An emulator of the YellowDog platform's REST API, for RayDog. "
        "Point YD_API_URL at it; any API key works unless --api-key is given.",
    )
    parser.add_argument("--port", type=int, required=True, help="port to listen on (0: any)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--run-tasks", action="store_true", help="run task scripts as processes")
    parser.add_argument("--work-dir", help="where task processes run (default: a temp folder)")
    parser.add_argument("--loopback-ips", action="store_true", help="give nodes 127.x.y.z IPs")
    parser.add_argument("--public-ip", help="one public address for every node")
    parser.add_argument("--api-key", help="accept only this key, as ID:SECRET")
    parser.add_argument("--templates", help="accept only these template ids (comma-separated)")
    parser.add_argument("--provision-delay", type=float, default=defaults.provision_delay)
    parser.add_argument("--boot-delay", type=float, default=defaults.boot_delay)
    parser.add_argument("--task-start-delay", type=float, default=defaults.task_start_delay)
    parser.add_argument(
        "--setup-delay",
        type=float,
        default=defaults.setup_delay,
        help="seconds a node's setup takes after its agent registered (tasks may start before)",
    )
    parser.add_argument(
        "--node-shutdown-delay",
        type=float,
        default=defaults.node_shutdown_delay,
        help="seconds a shut-down pool's registered nodes keep running",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=defaults.time_scale,
        help="multiplies idle shutdown timeouts and task timeouts given through the API",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    config = EmulatorConfig(
        provision_delay=args.provision_delay,
        boot_delay=args.boot_delay,
        task_start_delay=args.task_start_delay,
        setup_delay=args.setup_delay,
        node_shutdown_delay=args.node_shutdown_delay,
        time_scale=args.time_scale,
        run_tasks=args.run_tasks,
        work_dir=args.work_dir,
        api_key=args.api_key,
        templates=args.templates.split(",") if args.templates else None,
        loopback_ips=args.loopback_ips,
        public_ip=args.public_ip,
    )
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    emulator = Emulator(config, args.host, args.port).start()
    print(f"YellowDog emulator listening on {emulator.url}", flush=True)
    try:
        stop.wait()
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
