"""``bench inspect RUN --cell METHOD-K [--units ...]``: flags and the command (wired into bench.cli)."""
from __future__ import annotations

import argparse
import sys

from bench.parsing import int_list


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (results/<run>) holding cells.jsonl and checkpoints/")
    parser.add_argument("--cell", required=True, metavar="METHOD-K", help="the cell to inspect, e.g. mxd-32 or tc-k64")
    parser.add_argument("--units", type=int_list, default=None,
                        help="comma-separated unit numbers (default: the 8 most frequent plus 4 random live units)")
    parser.add_argument("--n-texts", type=int, default=128,
                        help="held-out contexts of the run's context length to read (default 128)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")


def run_inspect(args: argparse.Namespace) -> int:
    from bench.inspect.dashboard import write_dashboard

    path = write_dashboard(args.run, args.cell, args.units, args.n_texts, args.device)
    print(f"wrote {path} (open file://{path.resolve()})", file=sys.stderr)
    return 0
