"""The commands beside ``bench run``, ``plot`` and ``report``: each is its arguments and its handler.

``bench.cli`` registers every entry of ``COMMANDS``; a handler returns the exit code.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.config import sweep_configs
from bench.config_flags import add_config_flags
from bench.parsing import float_list
from bench.inspect import add_inspect_arguments, run_inspect
from bench.probing import add_probe_arguments, run_probe_command
from bench.steer import add_steer_arguments, run_steer
from bench.validation import UsageError, check_writable, validate

EXIT_OK = 0
# Arguments of `bench run` (and `tune`) that are not RunConfig settings.
RUN_ONLY_FLAGS = ("command", "debug", "plugin", "preset", "config", "figures", "figures_dir", "executor", "address",
                  "gpus_per_task", "handler", "seeds")


def add_eval_arguments(evaluate: argparse.ArgumentParser) -> None:
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


def add_export_arguments(export: argparse.ArgumentParser) -> None:
    export.add_argument("run", help="the run directory (results/<run>)")
    export.add_argument("--cell", required=True, metavar="METHOD-kK", help="the cell, e.g. tc-k32")
    export.add_argument("--format", required=True, choices=("sae-lens", "sparsify", "mxbench"))
    export.add_argument("--out", default=None, help="output folder (default: exports/<run>-<cell>-<format>)")
    export.add_argument("--push-to-hub", default=None, metavar="ORG/NAME", help="upload the folder with huggingface_hub")
    export.add_argument("--private", action="store_true", help="create the hub repo as private")


def add_compare_arguments(compare: argparse.ArgumentParser) -> None:
    compare.add_argument("runs", nargs="*", help="run directories (default: every run under results/)")
    compare.add_argument("--baseline", default="tc", help="the method every other one is compared with (default: tc)")
    compare.add_argument("--json", default=None, metavar="FILE", help="also write the comparison as JSON")


def add_tune_arguments(tune: argparse.ArgumentParser) -> None:
    add_config_flags(tune)
    tune.add_argument("--grid", type=float_list, default=None, metavar="LR,LR",
                      help="learning rates to try (default: 1e-4,3e-4,1e-3,3e-3)")
    tune.add_argument("--tune-k", type=int, default=None, help="the K every method is tuned at (default: the run's first K)")
    tune.add_argument("--tune-tokens", type=int, default=None,
                      help="training tokens per (method, LR) pair (default: the run's --tokens)")
    tune.add_argument("--out", default=None, metavar="FILE.json",
                      help="where the grid, scores and choices go (default: <results-dir>/tune/<run name>-L<layer>.json)")


def add_curve_arguments(curve: argparse.ArgumentParser) -> None:
    curve.add_argument("runs", nargs="+", help="run directories that differ only in --tokens (results/<run>)")
    curve.add_argument("--out-dir", default=None, metavar="DIR",
                       help="where the figure and tables go (default: figures/<the runs' shared name>-curve "
                            "beside the results directory)")


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
    tuning = tune_learning_rates(cfg, list(args.grid or DEFAULT_GRID), k, tokens)
    out = Path(args.out) if args.out else Path(cfg.results_dir) / "tune" / f"{cfg.run_name_or_default()}-L{tuning.layer}.json"
    print(format_tuning(tuning.methods))
    print(f"wrote {write_tuning(tuning, cfg, tokens, out)}", file=sys.stderr)
    return EXIT_OK


TUNE_ONLY_FLAGS = ("grid", "tune_k", "tune_tokens", "out")


def compare(args: argparse.Namespace) -> int:
    from bench.compare import compare_run, comparison_rows, format_comparison
    from bench.results import atomic_write_text

    everything = []
    for run_dir in run_dirs(args.runs):
        results = compare_run(run_dir, args.baseline)
        print(f"{run_dir}:\n{format_comparison(results)}\n")
        everything += comparison_rows(results)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(everything, indent=1) + "\n")
    return EXIT_OK


def curve(args: argparse.Namespace) -> int:
    """ΔCE vs training tokens from runs that differ only in --tokens: a figure and its points as CSV and markdown."""
    from bench.curve_figure import plot_learning_curve
    from bench.learning_curve import default_out_dir, learning_curve, write_points

    runs = run_dirs(args.runs)
    found = learning_curve(runs)
    out = Path(args.out_dir) if args.out_dir else default_out_dir(runs)
    check_writable(out, "figures directory")
    for path in write_points(found, out) + plot_learning_curve(found, out):
        print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK


def run_dirs(given: list[str]) -> list[Path]:
    """The run directories given (a results directory stands for every run in it), or every run
    under ./results; a path that holds no run is a one-line error (figure_names.RunsNotFound)."""
    from bench.figure_names import find_run_dirs

    return find_run_dirs(given)


# (name, help, add_arguments, handler)
COMMANDS = [
    ("eval", "score saved checkpoints on lm-eval tasks, or dictionaries trained elsewhere (--load) with every "
             "metric of a trained cell", add_eval_arguments, evaluate),
    ("export", "write a trained cell in SAELens, sparsify or mxbench format, with a model card; optionally push "
               "it to the hub", add_export_arguments, export),
    ("compare", "each method's paired CE and KL difference to a baseline method, per K, with its standard error "
                "and p-value", add_compare_arguments, compare),
    ("curve", "the learning curve, ΔCE vs training tokens, of runs that differ only in --tokens (no model "
              "needed)", add_curve_arguments, curve),
    ("tune", "pick each method's learning rate by held-out loss over a grid", add_tune_arguments, tune),
    ("probe", "sparse probing: how well single units (or a few) of each saved cell encode known concepts, with "
              "the MLP's neurons, random projections and a dense probe as baselines", add_probe_arguments,
     run_probe_command),
    ("inspect", "an HTML dashboard of a trained cell's units: firing frequency, top contexts, activation histogram, "
                "promoted tokens", add_inspect_arguments, run_inspect),
    ("steer", "steer the LM with one unit of a trained cell; samples scored by perplexity and a coherence proxy or "
              "an LLM judge", add_steer_arguments, run_steer),
]
