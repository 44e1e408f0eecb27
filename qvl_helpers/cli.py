"""The ``qvl`` command line: the course's steps for scripts, CI and several GPUs.

argparse does the parsing. Every command returns an exit status: 0 success, 1 the input has
problems (reported), 2 the command could not run. A :class:`~qvl_helpers.errors.QVLError`
becomes one line on stderr naming the file, the line or sample, and the fix — never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from .errors import QVLError


def cmd_env(args: argparse.Namespace) -> int:
    from .config import load_config
    from .env import run_checks

    report = run_checks(load_config())
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.text())
    return 0 if report.ok else 1


def cmd_tiny(args: argparse.Namespace) -> int:
    from .tiny import build_tiny_model

    out = build_tiny_model(args.out, seed=args.seed)
    print(f"tiny Qwen2.5-VL stand-in written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qvl", description="Fine-tune Qwen2.5-VL on your own data: the course's steps.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("env", help="check this machine and recommend settings")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("tiny", help="build the tiny random stand-in model (offline)")
    p.add_argument("--out", required=True, help="folder to write the model to")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    p.set_defaults(func=cmd_tiny)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``qvl`` with ``argv`` (default: the process arguments); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad arguments, 0 on --help
        return int(exc.code or 0)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except QVLError as exc:
        print(f"qvl {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"qvl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
