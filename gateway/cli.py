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


def cmd_up(args: argparse.Namespace) -> int:
    from gateway.local import run_local_stack

    return run_local_stack(
        backends=args.backends,
        backend_kind=args.backend,
        use_uvloop=not args.no_uvloop,
        config_path=args.config,
    )


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
    up.add_argument("--backends", type=int, default=3)
    up.add_argument("--backend", choices=["torch", "fake", "auto"], default="auto")
    up.add_argument("--config", "-c", help="gateway config (default: the embedded one)")
    up.add_argument("--no-uvloop", action="store_true")
    up.set_defaults(func=cmd_up)
    simulate = sub.add_parser(
        "simulate",
        help="discrete-event fleet simulation driving the real policies (see BENCHMARKS.md)",
        add_help=False,
    )
    simulate.set_defaults(func=lambda args: 2)  # handled in main(): its own argument parser
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:  # the simulator parses its own arguments
        from loadtests.simulate.cli import main as simulate_main

        sys.exit(simulate_main(argv[1:]))
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
