"""``bench``: the command line. Parses arguments into a RunConfig and hands it to the harness.

Bad input is reported as one line on stderr with exit code 2 (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
from pathlib import Path
from typing import Sequence

import methods
from bench.config import load_config_file, sweep_configs
from bench.config_flags import add_config_flags
from bench import subcommands
from bench.subcommands import RUN_ONLY_FLAGS, run_dirs
from bench.executors import EXECUTORS, SweepError
from bench.parsing import int_list
from bench.validation import UsageError, check_writable, validate
from bench.perf import add_cost_arguments, add_perf_arguments

EXIT_OK, EXIT_CELL_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130



class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage text is one `--help` away), and a flag must
    be spelled in full: ``--results`` is not silently taken as ``--results-dir``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="import a Python file that registers extra methods (repeatable)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    run = sub.add_parser("run", help="train and evaluate sparse replacements of one MLP layer")
    run.add_argument("--config", default=None, metavar="FILE.toml",
                     help="a TOML file holding a whole sweep (see sweeps/); flags given here override it")
    add_config_flags(run)
    run.add_argument("--seeds", type=int_list, default=None, metavar="S,S",
                     help="train every cell once per seed (bench compare then averages over seeds and shows their spread)")
    run.add_argument("--executor", default="local", choices=EXECUTORS,
                     help="local (default): runs one after another here; ray: one Ray task per run directory")
    run.add_argument("--address", default=None,
                     help="Ray cluster: auto, HOST:PORT (default: $RAY_ADDRESS, else a local cluster)")
    run.add_argument("--gpus-per-task", type=float, default=None,
                     help="GPUs each Ray task asks for (default: 1 for CUDA runs, else 0)")
    run.add_argument("--no-figures", dest="figures", action="store_false",
                     help="skip the figures and REPORT.md written at the end of the run")
    run.add_argument("--figures-dir", default=None,
                     help="figures go to <figures-dir>/<run>/ (default: figures/<run> beside the results directory)")

    plot = sub.add_parser("plot", help="regenerate the figures of stored runs (no model needed)")
    plot.add_argument("runs", nargs="*", help="run or results directories (default: results/)")
    plot.add_argument("--out", default=None, help="figures go to <out>/<run>/ (default: figures/<run> beside the "
                                                   "results directory)")

    report = sub.add_parser("report", help="write <run>/REPORT.md with tables and the figures embedded")
    report.add_argument("runs", nargs="*", help="run or results directories (default: results/)")
    report.add_argument("--figures", default=None, help="figures are in <figures>/<run>/ (default: figures/<run> "
                                                        "beside the results directory)")

    for name, help_text, add_arguments, handler in subcommands.COMMANDS:
        command = sub.add_parser(name, help=help_text)
        add_arguments(command)
        command.set_defaults(handler=handler)

    sub.add_parser("methods", help="list registered methods with their hyper-parameters")

    perf = sub.add_parser("perf", help="measure training speed, memory and FLOP/s of every method on this machine")
    add_perf_arguments(perf)

    cost = sub.add_parser("cost", help="estimate a sweep's hours on this machine from rates measured at its shapes")
    add_cost_arguments(cost)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error argparse already printed in one line
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    _quiet_libraries()
    try:
        for path in args.plugin:
            methods.load_plugin(path)
        methods.load_entry_points()
        if args.command == "methods":
            return list_methods()
        if args.command == "run":
            return run(args)
        if args.command == "perf":
            from bench.perf import run_perf

            run_perf(args)
            return EXIT_OK
        if args.command == "cost":
            from bench.perf import run_cost

            run_cost(args)
            return EXIT_OK
        if getattr(args, "handler", None) is not None:
            return args.handler(args)
        if args.command in ("plot", "report"):
            return plot_and_report(run_dirs(args.runs), args.out if args.command == "plot" else args.figures,
                                   plot=args.command == "plot", report=args.command == "report")
    except KeyboardInterrupt:
        print("interrupted; finished cells are saved, re-run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SweepError as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return EXIT_CELL_FAILED
    except (UsageError, ValueError, KeyError, FileNotFoundError) as error:
        if args.debug:
            raise
        message = error.args[0] if error.args else str(error)
        print(f"bench: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:  # a file system that refuses (read-only, full, not a directory): one line, no traceback
        if args.debug:
            raise
        where = f": {error.filename}" if error.filename else ""
        print(f"bench: error: {error.strerror or error}{where}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _quiet_libraries() -> None:
    """Our own tqdm bars show progress; the libraries' bars and info logs are noise here."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def run(args: argparse.Namespace) -> int:
    from bench import storage
    from bench.executors import run_sweep
    from bench.results import format_table

    if args.executor != "ray" and (args.address is not None or args.gpus_per_task is not None):
        raise UsageError("--address and --gpus-per-task need --executor ray")
    if args.gpus_per_task is not None and args.gpus_per_task < 0:
        raise UsageError(f"--gpus-per-task must be >= 0, got {args.gpus_per_task}")
    if args.executor == "ray" and importlib.util.find_spec("ray") is None:
        raise UsageError("--executor ray needs Ray: pip install 'mxbench[ray]'")
    flags = {k: v for k, v in vars(args).items() if k not in RUN_ONLY_FLAGS}
    configs = sweep_configs(load_config_file(args.config) if args.config else [{}], args.preset, flags)
    if args.seeds:  # each cell once per seed, in the same run directory (the seed is part of a cell's key)
        configs = [dataclasses.replace(cfg, seed=seed) for cfg in configs for seed in dict.fromkeys(args.seeds)]
    for cfg in configs:  # every run is checked before the first one starts
        validate(cfg)
    rows = run_sweep(configs, args.executor, args.address, args.gpus_per_task, args.plugin)
    order = list(dict.fromkeys(m for cfg in configs for m in methods.expand_method_names(cfg.methods)))
    print(format_table(rows, order))
    local = [cfg for cfg in configs if not storage.is_url(cfg.results_dir)]
    if args.figures and len(local) < len(configs):
        print("bench: results at a URL are not plotted here; fetch them and run `bench plot`", file=sys.stderr)
    if args.figures and local:
        run_dirs = sorted({Path(cfg.results_dir) / cfg.run_name_or_default() for cfg in local})
        plot_and_report(run_dirs, args.figures_dir, plot=True, report=True)
    return EXIT_CELL_FAILED if any(r.get("status") != "ok" for r in rows) else EXIT_OK


def plot_and_report(run_dirs: list[Path], figures_root: str | None, plot: bool, report: bool) -> int:
    """Figures go to figures/<run>/ beside the results directory, or <figures_root>/<run>/ when a root is
    given (figure_names.figures_dir_for), so runs never overwrite each other's files."""
    from bench.figure_names import figures_dir_for
    from bench.report import write_report

    for run_dir in run_dirs:
        figures = figures_dir_for(run_dir, figures_root)
        check_writable(figures, "figures directory")
        if plot:
            written = draw_run_figures(run_dir, figures)
            print(f"{run_dir}: {len(written)} figure files in {figures}", file=sys.stderr)
        if report:
            print(f"{run_dir}: wrote {write_report(run_dir, figures)}", file=sys.stderr)
    return EXIT_OK


def draw_run_figures(run_dir: Path, figures: Path) -> list[Path]:
    """Every figure `bench plot` draws for one run: the K and Pareto figures of its rows, and the
    probing and steering figures where those commands have scored its cells; returns the files."""
    from bench.plots import plot_results
    from bench.probing_figure import plot_probing, plot_steering

    return plot_results([run_dir], figures) + plot_probing(run_dir, figures) + plot_steering(run_dir, figures)


def list_methods() -> int:
    from bench.config import PRESETS, RunConfig

    run_set = ("k", "expansion")  # every cell of `bench run` takes these from the run, not the method
    for name in methods.method_names():
        entry = methods.get_method(name)
        params = ", ".join(f"{k}={v}" for k, v in entry.hyperparameters().items() if k not in run_set)
        print(f"{name:<18} {entry.description}\n{'':<18} {params or '(no other hyper-parameters)'}")
    defaults, paper = RunConfig(), PRESETS["paper"]
    print(f"\nk and expansion are set by the run, not by the method: --k and --expansion, else the preset's "
          f"(smoke: k={','.join(map(str, defaults.ks))} expansion={defaults.expansion}; paper: "
          f"k={','.join(map(str, paper['ks']))} expansion={paper['expansion']}). The values above are each "
          f"method's own defaults (its Config dataclass and its @register arguments).")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
