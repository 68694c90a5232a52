"""The ``clfast`` command line: ``clfast train`` runs a continual-learning stream, ``clfast info`` reports the
build, ``clfast bench`` runs the op benchmark."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clfast", description="fast continual learning")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="torch version, compiled devices and CUDA architectures")
    bench = sub.add_parser("bench", help="run benchmarks/bench_state_ops.py (from a source checkout)")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark script")
    from .cli_train import add_train_parser, run_train

    train = add_train_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "train":
        return run_train(args, train)
    if args.command == "info":
        from ._info import format_info

        print(format_info())
        return 0
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_state_ops.py"
    if not script.exists():
        print(f"clfast bench: {script} not found; it ships with the source checkout, not the wheel",
              file=sys.stderr)
        return 2
    sys.argv = [str(script), *args.args]
    runpy.run_path(str(script), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
