"""``bench``: the command line. Parses arguments into a RunConfig and hands it to the harness.

Bad input is reported as one line on stderr with exit code 2 (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import methods
from bench.config import PRESETS, preset_config

EXIT_OK, EXIT_CELL_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(ValueError):
    """Bad input from the user: printed as one line, exit code 2."""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def _name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="import a Python file that registers extra methods (repeatable)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train and evaluate sparse replacements of one MLP layer")
    run.add_argument("--methods", type=_name_list, default=["all"],
                     help="comma-separated method names, or 'all' (see `bench methods`)")
    run.add_argument("--model", default=None, help="alias (gemma-3-270m, gpt2, gemma-2b, ...), hub id or local dir")
    run.add_argument("--layer", type=int, default=None, help="layer index (default: the middle layer)")
    run.add_argument("--k", dest="ks", type=_int_list, default=None, help="comma-separated K values")
    run.add_argument("--preset", default="smoke", help=f"one of {', '.join(PRESETS)} (default: smoke)")
    run.add_argument("--expansion", type=int, default=None, help="parameter budget: a TC of width expansion*d")
    run.add_argument("--dataset", default=None, help="wiki-offline, a hub dataset name, or a local .jsonl/.txt path")
    run.add_argument("--tokens", dest="train_tokens", type=int, default=None, help="training tokens per cell")
    run.add_argument("--eval-tokens", type=int, default=None, help="held-out tokens for NMSE/L0/dead units")
    run.add_argument("--ce-tokens", type=int, default=None, help="held-out tokens for spliced CE")
    run.add_argument("--context-length", type=int, default=None)
    run.add_argument("--batch-size", type=int, default=None, help="tokens per optimiser step")
    run.add_argument("--lr", type=float, default=None)
    run.add_argument("--warmup-steps", type=int, default=None)
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    run.add_argument("--results-dir", default=None, help="default: results/")
    run.add_argument("--run-name", default=None, help="default: <model>-<preset>")

    sub.add_parser("methods", help="list registered methods with their hyper-parameters")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        for path in args.plugin:
            methods.load_plugin(path)
        methods.load_entry_points()
        if args.command == "methods":
            return list_methods()
        if args.command == "run":
            return run(args)
    except KeyboardInterrupt:
        print("interrupted; finished cells are saved, re-run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, ValueError, KeyError, FileNotFoundError) as error:
        if args.debug:
            raise
        message = error.args[0] if error.args else str(error)
        print(f"bench: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _quiet_libraries() -> None:
    """Our own tqdm bars show progress; the libraries' bars and info logs are noise here."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def run(args: argparse.Namespace) -> int:
    from bench.harness import run_benchmark
    from bench.results import format_table

    options = {k: v for k, v in vars(args).items() if k not in ("command", "debug", "plugin", "preset")}
    cfg = preset_config(args.preset, **options)
    validate(cfg)
    rows = run_benchmark(cfg)
    print(format_table(rows))
    return EXIT_CELL_FAILED if any(r.get("status") != "ok" for r in rows) else EXIT_OK


def validate(cfg) -> None:
    """Cheap checks before any model is loaded."""
    from bench.harness import expand_methods

    expand_methods(cfg.methods)
    for name in ("train_tokens", "eval_tokens", "ce_tokens", "batch_size", "expansion", "context_length"):
        value = getattr(cfg, name)
        if value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    bad = [k for k in cfg.ks if k < 1]
    if bad:
        raise UsageError(f"--k values must be >= 1, got {bad[0]}")
    if cfg.layer is not None and cfg.layer < 0:
        raise UsageError(f"--layer must be >= 0, got {cfg.layer}")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {cfg.device!r}")


def list_methods() -> int:
    for name in methods.method_names():
        entry = methods.get_method(name)
        params = ", ".join(f"{k}={v}" for k, v in entry.hyperparameters().items())
        print(f"{name:<18} {entry.description}\n{'':<18} {params}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
