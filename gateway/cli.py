"""Command line: arguments only; the work happens in :mod:`gateway.server` and friends."""

from __future__ import annotations

import argparse
import sys

from gateway.config import (
    ConfigError,
    GatewayConfig,
    default_config_text,
    load_config,
    parse_config,
)
from gateway.process import run_loop, settle_heap, setup_logging


def _load(path: str | None) -> GatewayConfig:
    if path is None:
        return parse_config(default_config_text())
    return load_config(path)


def _print_problems(source: str, exc: ConfigError) -> None:
    print(f"{source}: invalid config", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def cmd_check_config(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            load_config(path)
        except ConfigError as exc:
            _print_problems(path, exc)
            status = 2
        else:
            print(f"{path}: ok")
    return status


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config)
    except ConfigError as exc:
        _print_problems(args.config or "<embedded default>", exc)
        return 2
    setup_logging(config.logging.level)
    if args.workers > 1:
        from gateway.workers import serve_workers

        return serve_workers(config, args.config, args.workers, use_uvloop=not args.no_uvloop)
    from gateway.server import Gateway

    async def run() -> None:
        gateway = Gateway(config, args.config)
        await gateway.start()
        gateway.install_signal_handlers()
        settle_heap()
        await gateway.stopped.wait()

    run_loop(run(), use_uvloop=not args.no_uvloop)
    return 0


def cmd_default_config(args: argparse.Namespace) -> int:
    sys.stdout.write(default_config_text())
    return 0


UP_PORT_FLAGS = ("port", "admin_port", "backends", "backend_port")


def cmd_up(args: argparse.Namespace) -> int:
    from gateway.local import local_config, run_local_stack

    chosen = [
        f"--{name.replace('_', '-')}" for name in UP_PORT_FLAGS if getattr(args, name) is not None
    ]
    if args.config and chosen:
        print(
            f"tailgate up: {', '.join(chosen)} change the embedded config; "
            "with --config, set listen, admin and backends in the file",
            file=sys.stderr,
        )
        return 2
    try:
        config = _load(args.config)
    except ConfigError as exc:
        _print_problems(args.config or "<embedded default>", exc)
        return 2
    config = local_config(config, args.port, args.admin_port, args.backends, args.backend_port)
    return run_local_stack(config, args.config, use_uvloop=not args.no_uvloop)


def _port_number(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range 1-65535")
    return port


def _count(text: str) -> int:
    count = int(text)
    if count < 1:
        raise argparse.ArgumentTypeError("at least one backend")
    return count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailgate", description="Latency-aware load-balancing gateway for inference fleets."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", "-c", help="YAML config file (default: the embedded one)")
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    serve.add_argument("--no-uvloop", action="store_true", help="use asyncio's default loop")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate config files (exit 2 if invalid)")
    check.add_argument("files", nargs="+")
    check.set_defaults(func=cmd_check_config)

    default = sub.add_parser("default-config", help="print the embedded default config")
    default.set_defaults(func=cmd_default_config)

    up = sub.add_parser("up", help="run local backends and the gateway in front of them")
    up.add_argument("--port", type=_port_number, help="the gateway's port (default 8080)")
    up.add_argument("--admin-port", type=_port_number, help="the admin port (default 9901)")
    up.add_argument("--backends", type=_count, help="how many local backends (default 3)")
    up.add_argument(
        "--backend-port", type=_port_number, help="the first backend's port (default 8001)"
    )
    up.add_argument("--config", "-c", help="gateway config (default: the embedded one)")
    up.add_argument("--no-uvloop", action="store_true")
    up.set_defaults(func=cmd_up)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
