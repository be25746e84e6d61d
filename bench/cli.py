"""``bench``: the command line. Parses arguments into a RunConfig and hands it to the harness.

Bad input is reported as one line on stderr with exit code 2 (``--debug`` shows the traceback).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Sequence

import methods
from bench.config import load_config_file, sweep_configs
from bench.config_flags import add_config_flags
from bench.parsing import float_list
from bench.executors import EXECUTORS, SweepError
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
    run.add_argument("--executor", default="local", choices=EXECUTORS,
                     help="local (default): runs one after another here; ray: one Ray task per run directory")
    run.add_argument("--address", default=None,
                     help="Ray cluster: auto, HOST:PORT (default: $RAY_ADDRESS, else a local cluster)")
    run.add_argument("--gpus-per-task", type=float, default=None,
                     help="GPUs each Ray task asks for (default: 1 for CUDA runs, else 0)")
    run.add_argument("--no-figures", dest="figures", action="store_false",
                     help="skip the figures and REPORT.md written at the end of the run")
    run.add_argument("--figures-dir", default="figures", help="figures go to <figures-dir>/<run>/ (default: figures)")

    plot = sub.add_parser("plot", help="regenerate the figures of stored runs (no model needed)")
    plot.add_argument("runs", nargs="*", help="run directories (default: every run under results/)")
    plot.add_argument("--out", default="figures", help="figures go to <out>/<run>/ (default: figures)")

    report = sub.add_parser("report", help="write <run>/REPORT.md with tables and the figures embedded")
    report.add_argument("runs", nargs="*", help="run directories (default: every run under results/)")
    report.add_argument("--figures", default="figures", help="where the run's figures are (default: figures)")

    evaluate = sub.add_parser("eval", help="score saved checkpoints on lm-eval tasks, or dictionaries trained "
                                           "elsewhere (--load) with every metric of a trained cell")
    evaluate.add_argument("runs", nargs="*", help="run directories whose saved cells get task scores (results/<run>)")
    evaluate.add_argument("--tasks", default=None, help="'default' (offline, shipped) or lm-eval task names")
    evaluate.add_argument("--task-limit", type=int, default=None, help="at most this many examples per task")
    evaluate.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    evaluate.add_argument("--load", action="append", default=[], metavar="SOURCE",
                          help="a SAELens, sparsify or mxbench dictionary: a local folder, hf://ORG/REPO/PATH or "
                               "ORG/REPO:PATH (repeatable; needs --model and --layer)")
    evaluate.add_argument("--model", default=None, help="the model the loaded dictionaries belong to")
    evaluate.add_argument("--layer", type=int, default=None, help="the layer whose MLP they replace")
    evaluate.add_argument("--norm-scaling-factor", type=float, default=None,
                          help="SAELens dataset-norm scaling factor, when its cfg.json does not carry it")
    for flag in ("--dataset", "--results-dir", "--run-name", "--preset"):
        evaluate.add_argument(flag, default=None, help="as for bench run (default: the loaded cells' run: "
                                                       "external-<model>-L<layer>)" if flag == "--run-name" else
                              "as for bench run")
    for flag in ("--eval-tokens", "--ce-tokens", "--context-length"):
        evaluate.add_argument(flag, type=int, default=None, help="as for bench run")

    export = sub.add_parser("export", help="write a trained cell in SAELens, sparsify or mxbench format, "
                                           "with a model card; optionally push it to the hub")
    export.add_argument("run", help="the run directory (results/<run>)")
    export.add_argument("--cell", required=True, metavar="METHOD-kK", help="the cell, e.g. tc-k32")
    export.add_argument("--format", required=True, choices=("sae-lens", "sparsify", "mxbench"))
    export.add_argument("--out", default=None, help="output folder (default: exports/<run>-<cell>-<format>)")
    export.add_argument("--push-to-hub", default=None, metavar="ORG/NAME", help="upload the folder with huggingface_hub")
    export.add_argument("--private", action="store_true", help="create the hub repo as private")

    compare = sub.add_parser("compare", help="each method's paired CE and KL difference to a baseline method, "
                                             "per K, with its standard error and p-value")
    compare.add_argument("runs", nargs="*", help="run directories (default: every run under results/)")
    compare.add_argument("--baseline", default="tc", help="the method every other one is compared with (default: tc)")
    compare.add_argument("--json", default=None, metavar="FILE", help="also write the comparison as JSON")

    tune = sub.add_parser("tune", help="pick each method's learning rate by held-out loss over a grid")
    add_config_flags(tune)
    tune.add_argument("--grid", type=float_list, default=None, metavar="LR,LR",
                      help="learning rates to try (default: 1e-4,3e-4,1e-3,3e-3)")
    tune.add_argument("--tune-k", type=int, default=None, help="the K every method is tuned at (default: the run's first K)")
    tune.add_argument("--tune-tokens", type=int, default=None,
                      help="training tokens per (method, LR) pair (default: the run's --tokens)")
    tune.add_argument("--out", default=None, metavar="FILE.json",
                      help="where the grid, scores and choices go (default: <results-dir>/tune/<model>-L<layer>.json)")

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
        if args.command == "eval":
            return evaluate(args)
        if args.command == "export":
            return export(args)
        if args.command == "perf":
            from bench.perf import run_perf

            run_perf(args)
            return EXIT_OK
        if args.command == "cost":
            from bench.perf import run_cost

            run_cost(args)
            return EXIT_OK
        if args.command == "tune":
            return tune(args)
        if args.command == "compare":
            return compare(args)
        if args.command in ("plot", "report"):
            return plot_and_report(_run_dirs(args.runs), args.out if args.command == "plot" else args.figures,
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


# Arguments of `bench run` that are not RunConfig settings.
RUN_ONLY_FLAGS = ("command", "debug", "plugin", "preset", "config", "figures", "figures_dir", "executor", "address",
                  "gpus_per_task")


def _run_dirs(given: list[str]) -> list[Path]:
    if given:
        return [Path(p) for p in given]
    found = sorted(p.parent for p in Path("results").glob("*/cells.jsonl"))
    if not found:
        raise UsageError("no runs found under results/; give run directories (results/<run>)")
    return found


def plot_and_report(run_dirs: list[Path], figures_root: str, plot: bool, report: bool) -> int:
    """Figures go to <figures_root>/<run>/, so runs never overwrite each other's files."""
    from bench.plots import plot_results
    from bench.report import write_report

    check_writable(Path(figures_root), "figures directory")
    for run_dir in run_dirs:
        figures = Path(figures_root) / run_dir.name
        if plot:
            written = plot_results([run_dir], figures)
            print(f"{run_dir}: {len(written)} figure files in {figures}", file=sys.stderr)
        if report:
            print(f"{run_dir}: wrote {write_report(run_dir, figures)}", file=sys.stderr)
    return EXIT_OK


def evaluate(args: argparse.Namespace) -> int:
    """Task scores for saved cells of runs, and/or loaded dictionaries scored like trained cells."""
    from bench.rescore import evaluate_saved_tasks
    from bench.tasks import resolve_tasks

    if not args.runs and not args.load:
        raise UsageError("give run directories to score saved cells, or --load SOURCE --model M --layer L")
    if args.load:
        from bench.external_eval import evaluate_external
        from bench.results import format_table

        if args.model is None or args.layer is None:
            raise UsageError("--load needs --model and --layer: the model and layer the dictionaries belong to")
        flags = {name: getattr(args, name) for name in ("model", "layer", "dataset", "results_dir", "run_name",
                                                        "eval_tokens", "ce_tokens", "context_length", "device", "tasks",
                                                        "task_limit")}
        flags["run_name"] = flags["run_name"] or f"external-{Path(args.model).name}-L{args.layer}"
        (cfg,) = sweep_configs([{}], args.preset, flags)
        validate(cfg)
        print(format_table(evaluate_external(cfg, args.load, args.norm_scaling_factor)))
    if args.runs:
        tasks = resolve_tasks(args.tasks or "default")
        for run_dir in args.runs:
            evaluate_saved_tasks(Path(run_dir), tasks, args.task_limit, args.device)
    return EXIT_OK


def export(args: argparse.Namespace) -> int:
    from bench.interop import export_cell, push_to_hub

    out = Path(args.out or f"exports/{Path(args.run).name}-{args.cell}-{args.format}")
    print(export_cell(args.run, args.cell, args.format, out))
    if args.push_to_hub:
        print(push_to_hub(out, args.push_to_hub, private=args.private or None))
    return EXIT_OK


def tune(args: argparse.Namespace) -> int:
    from bench.tune import DEFAULT_GRID, format_tuning, tune_learning_rates, write_tuning

    flags = {k: v for k, v in vars(args).items() if k not in RUN_ONLY_FLAGS + TUNE_ONLY_FLAGS}
    (cfg,) = sweep_configs([{}], args.preset, flags)
    validate(cfg)
    k = args.tune_k if args.tune_k is not None else cfg.ks[0]
    tokens = args.tune_tokens if args.tune_tokens is not None else cfg.train_tokens
    if k < 1 or tokens < 1:
        raise UsageError(f"--tune-k and --tune-tokens must be positive, got {k} and {tokens}")
    results = tune_learning_rates(cfg, list(args.grid or DEFAULT_GRID), k, tokens)
    layer = cfg.layer if cfg.layer is not None else "mid"
    out = Path(args.out) if args.out else Path(cfg.results_dir) / "tune" / f"{cfg.run_name_or_default()}-L{layer}.json"
    print(format_tuning(results))
    print(f"wrote {write_tuning(results, cfg, tokens, out)}", file=sys.stderr)
    return EXIT_OK


TUNE_ONLY_FLAGS = ("grid", "tune_k", "tune_tokens", "out")


def compare(args: argparse.Namespace) -> int:
    import json

    from bench.compare import compare_run, comparison_rows, format_comparison
    from bench.results import atomic_write_text

    everything = []
    for run_dir in _run_dirs(args.runs):
        results = compare_run(run_dir, args.baseline)
        print(f"{run_dir}:\n{format_comparison(results)}\n")
        everything += comparison_rows(results)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(everything, indent=1) + "\n")
    return EXIT_OK


def list_methods() -> int:
    for name in methods.method_names():
        entry = methods.get_method(name)
        params = ", ".join(f"{k}={v}" for k, v in entry.hyperparameters().items())
        print(f"{name:<18} {entry.description}\n{'':<18} {params}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
