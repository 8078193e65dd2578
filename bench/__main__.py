"""Run every benchmark in turn: ``python -m bench [--quick] [NAME ...]``."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import bench


def _modules() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")
    )


def main(argv: list[str] | None = None) -> int:
    """Run the named benchmarks (all by default), passing ``--quick`` through."""
    names = _modules()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sweeps, for a smoke run")
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default all: {', '.join(names)})",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        parser.error(f"no benchmark named {', '.join(unknown)}; choose from {', '.join(names)}")
    status = 0
    for name in args.names or names:
        print(f"=== bench.{name}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        status |= module.main(["--quick"] if args.quick else []) or 0
    return status


if __name__ == "__main__":
    sys.exit(main())
