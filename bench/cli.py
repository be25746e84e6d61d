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
from bench.config import PRESETS, load_config_file, sweep_configs
from bench.executors import EXECUTORS, SweepError
from bench.parsing import int_list, name_list
from bench.devices import DTYPES, check_device_name
from bench.perf import add_cost_arguments, add_perf_arguments

EXIT_OK, EXIT_CELL_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130



class UsageError(ValueError):
    """Bad input from the user: printed as one line, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage text is one `--help` away)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _flag(name: str) -> str:
    return {"train_tokens": "--tokens", "ks": "--k"}.get(name, "--" + name.replace("_", "-"))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="import a Python file that registers extra methods (repeatable)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    run = sub.add_parser("run", help="train and evaluate sparse replacements of one MLP layer")
    run.add_argument("--config", default=None, metavar="FILE.toml",
                     help="a TOML file holding a whole sweep (see sweeps/); flags given here override it")
    run.add_argument("--methods", type=name_list, default=None,
                     help="comma-separated method names, or 'all' (see `bench methods`)")
    run.add_argument("--model", default=None, help="alias (gemma-3-270m, gpt2, gemma-2b, ...), hub id or local dir")
    run.add_argument("--layer", type=int, default=None, help="layer index (default: the middle layer)")
    run.add_argument("--k", dest="ks", type=int_list, default=None, help="comma-separated K values")
    run.add_argument("--preset", default=None, help=f"one of {', '.join(PRESETS)} (default: smoke)")
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
    run.add_argument("--checkpoint-minutes", type=float, default=None,
                     help="save training state this often so an interrupted run resumes (default 10)")
    run.add_argument("--dtype", default=None, choices=DTYPES, help="the LM's dtype (auto: bf16 on GPU, fp32 on CPU)")
    run.add_argument("--precision", default=None, choices=("auto", "fp32", "bf16"),
                     help="sparse layers' compute (auto: bf16 autocast with fp32 master weights on GPU, fp32 on CPU)")
    run.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                     help="torch.compile the sparse layers (off by default)")
    run.add_argument("--trust-remote-code", action="store_true", default=None,
                     help="allow a hub model's own Python code to run (off by default)")
    run.add_argument("--tasks", default=None,
                     help="lm-eval task accuracy with each layer spliced in: 'default' (offline, shipped) or task names")
    run.add_argument("--task-limit", type=int, default=None, help="at most this many examples per task")
    run.add_argument("--activation-cache", default=None, metavar="DIR",
                     help="store the training activations here and reuse them in later runs (checked, never stale)")
    run.add_argument("--activation-cache-dtype", default=None, choices=("fp32", "bf16"),
                     help="storage dtype of the activation cache (default fp32)")
    run.add_argument("--memory-budget-gb", type=float, default=None,
                     help="memory the sparse layers may use together (default: what the device has free); "
                          "cells beyond it train in groups, one LM pass each")
    run.add_argument("--wandb", action="store_true", default=None,
                     help="also log losses and metrics to Weights & Biases (needs `pip install wandb`)")
    run.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    run.add_argument("--results-dir", default=None,
                     help="default: results/; on a cluster, a path every node sees or a URL (s3://, gs://, ...)")
    run.add_argument("--run-name", default=None, help="default: <model>-<preset>")

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

    evaluate = sub.add_parser("eval", help="score saved checkpoints on lm-eval tasks, without retraining")
    evaluate.add_argument("runs", nargs="+", help="run directories (results/<run>)")
    evaluate.add_argument("--tasks", default="default", help="'default' (offline, shipped) or lm-eval task names")
    evaluate.add_argument("--task-limit", type=int, default=None, help="at most this many examples per task")
    evaluate.add_argument("--device", default="auto", help="auto (default), cpu or cuda")

    sub.add_parser("methods", help="list registered methods with their hyper-parameters")

    perf = sub.add_parser("perf", help="measure training speed, memory and FLOP/s of every method on this machine")
    add_perf_arguments(perf)

    cost = sub.add_parser("cost", help="estimate a sweep's hours on this machine from rates measured at its shapes")
    add_cost_arguments(cost)
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
        if args.command == "eval":
            from bench.harness import evaluate_saved_tasks
            from bench.tasks import resolve_tasks

            tasks = resolve_tasks(args.tasks)
            for run_dir in args.runs:
                evaluate_saved_tasks(Path(run_dir), tasks, args.task_limit, args.device)
            return EXIT_OK
        if args.command == "perf":
            from bench.perf import run_perf

            run_perf(args)
            return EXIT_OK
        if args.command == "cost":
            from bench.perf import run_cost

            run_cost(args)
            return EXIT_OK
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
    return EXIT_OK


def _quiet_libraries() -> None:
    """Our own tqdm bars show progress; the libraries' bars and info logs are noise here."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def run(args: argparse.Namespace) -> int:
    from bench import storage
    from bench.executors import run_sweep
    from bench.harness import default_run_name
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
    print(format_table(rows))
    local = [cfg for cfg in configs if not storage.is_url(cfg.results_dir)]
    if args.figures and len(local) < len(configs):
        print("bench: results at a URL are not plotted here; fetch them and run `bench plot`", file=sys.stderr)
    if args.figures and local:
        run_dirs = sorted({Path(cfg.results_dir) / (cfg.run_name or default_run_name(cfg)) for cfg in local})
        plot_and_report(run_dirs, args.figures_dir, plot=True, report=True)
    return EXIT_CELL_FAILED if any(r.get("status") != "ok" for r in rows) else EXIT_OK


# Arguments of `bench run` that are not RunConfig settings.
RUN_ONLY_FLAGS = ("command", "debug", "plugin", "preset", "config", "figures", "figures_dir", "executor", "address",
                  "gpus_per_task")
INT_SETTINGS = ("task_limit", "layer", "expansion", "train_tokens", "eval_tokens", "ce_tokens", "context_length", "batch_size",
                "lm_batch_size", "ce_batch_size", "buffer_tokens", "warmup_steps", "seed")
FLOAT_SETTINGS = ("lr", "checkpoint_minutes", "memory_budget_gb")
STR_SETTINGS = ("tasks", "model", "dataset", "device", "dtype", "precision", "results_dir", "run_name", "activation_cache",
                "activation_cache_dtype")


def _setting_type(name: str) -> type:
    return int if name in INT_SETTINGS else float if name in FLOAT_SETTINGS else str


def validate(cfg) -> None:
    """Cheap checks before any model is loaded."""
    for name in INT_SETTINGS + FLOAT_SETTINGS + STR_SETTINGS:
        value, wanted = getattr(cfg, name), _setting_type(name)
        if value is not None and (not isinstance(value, wanted) or isinstance(value, bool)):
            if not (wanted is float and isinstance(value, int) and not isinstance(value, bool)):
                raise UsageError(f"{_flag(name)} must be {wanted.__name__}, got {value!r}")
    if not isinstance(cfg.ks, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in cfg.ks):
        raise UsageError(f"k must be a list of integers, got {cfg.ks!r}")
    if not isinstance(cfg.methods, list) or not all(isinstance(m, str) for m in cfg.methods):
        raise UsageError(f"methods must be a list of method names, got {cfg.methods!r}")
    methods.expand_method_names(cfg.methods)
    for name in ("train_tokens", "eval_tokens", "ce_tokens", "batch_size", "expansion", "context_length",
                 "lm_batch_size", "ce_batch_size", "buffer_tokens"):
        value = getattr(cfg, name)
        if value < 1:
            raise UsageError(f"{_flag(name)} must be a positive integer, got {value}")
    if cfg.context_length < 2:
        raise UsageError(f"--context-length must be at least 2 (a token and its successor), got {cfg.context_length}")
    bad = [k for k in cfg.ks if k < 1]
    if bad:
        raise UsageError(f"--k values must be >= 1, got {bad[0]}")
    if cfg.layer is not None and cfg.layer < 0:
        raise UsageError(f"--layer must be >= 0, got {cfg.layer}")
    if cfg.lr <= 0 or cfg.warmup_steps < 0 or cfg.checkpoint_minutes < 0:
        raise UsageError(f"lr must be > 0 and warmup-steps, checkpoint-minutes >= 0; got {cfg.lr}, "
                         f"{cfg.warmup_steps}, {cfg.checkpoint_minutes}")
    if cfg.tasks is not None:
        from bench.tasks import resolve_tasks

        resolve_tasks(cfg.tasks)
    if cfg.task_limit is not None and cfg.task_limit < 1:
        raise UsageError(f"--task-limit must be a positive integer, got {cfg.task_limit}")
    if cfg.activation_cache_dtype not in ("fp32", "bf16"):
        raise UsageError(f"activation-cache-dtype must be fp32 or bf16, got {cfg.activation_cache_dtype!r}")
    if cfg.dtype not in DTYPES or cfg.precision not in ("auto", "fp32", "bf16"):
        raise UsageError(f"dtype must be one of {', '.join(DTYPES)} and precision auto, fp32 or bf16; "
                         f"got {cfg.dtype!r}, {cfg.precision!r}")
    if cfg.wandb and importlib.util.find_spec("wandb") is None:
        raise UsageError("--wandb needs the wandb package: pip install wandb")
    for name in ("compile", "wandb", "trust_remote_code"):
        if not isinstance(getattr(cfg, name), bool):
            raise UsageError(f"{name} must be true or false, got {getattr(cfg, name)!r}")
    check_device_name(cfg.device)


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

    for run_dir in run_dirs:
        figures = Path(figures_root) / run_dir.name
        if plot:
            written = plot_results([run_dir], figures)
            print(f"{run_dir}: {len(written)} figure files in {figures}", file=sys.stderr)
        if report:
            print(f"{run_dir}: wrote {write_report(run_dir, figures)}", file=sys.stderr)
    return EXIT_OK


def list_methods() -> int:
    for name in methods.method_names():
        entry = methods.get_method(name)
        params = ", ".join(f"{k}={v}" for k, v in entry.hyperparameters().items())
        print(f"{name:<18} {entry.description}\n{'':<18} {params}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
