"""Entry point of the ``bev`` command: assembles the command groups and maps errors to exit codes."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bev_service.cli import calib_import, calib_tools, demo, model, project, replay, segment, serve, synth
from bev_service.errors import BevError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bev", description="bird's-eye-view perception for surround-view cameras")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    project.register(commands)
    synth.register(commands)
    model.register(commands)
    segment.register(commands)
    serve.register(commands)
    demo.register(commands)
    replay.register(commands)
    calib = commands.add_parser("calib", help="calibration: import rigs, intrinsics, homographies, checks")
    calib_commands = calib.add_subparsers(dest="calib_command", required=True, metavar="CALIB_COMMAND")
    calib_import.register(calib_commands)
    calib_tools.register(calib_commands)
    return parser


OPTIONAL_MODULES = frozenset({"torch", "torch_pruning", "onnxscript"})  # the [torch] extra


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except BevError as exc:
        print(f"bev: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if exc.name not in OPTIONAL_MODULES:
            raise
        # Serving needs neither; training, export and the torch backend do (the package's [torch] extra).
        print(f"bev: error: this command needs {exc.name}, not installed: pip install 'bev-service[torch]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
