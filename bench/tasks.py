"""lm-eval task scores of the LM as it stands: clean, zero-ablated or with a trained layer spliced in.

``evaluate_tasks`` wraps the in-memory Hugging Face model in lm-eval's ``HFLM``, so whatever MLP
``bench.splice`` has put in place is what lm-eval measures, and no weights are copied to disk.
The default tasks ship under ``bench/data/tasks/`` (YAML + JSONL, rebuilt by
``scripts/build_tasks.py``) and run offline: each YAML loads its JSONL through
``custom_dataset: !function loader.load_jsonl``, which lm-eval resolves next to the YAML and
which reads the file relative to itself. (A relative ``data_files`` would be resolved by
``datasets`` against the current directory instead.) Any other lm-eval task name works too,
downloading its data as lm-eval normally does.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

TASK_DIR = Path(__file__).resolve().parent / "data" / "tasks"
# The offline default set, cheapest first; ~1-2 minutes per evaluation of Gemma 3 270M on 2 CPU cores.
DEFAULT_TASKS: tuple[str, ...] = (
    "mxbench_wiki_cloze",
    "mxbench_wiki_ppl",
    "mxbench_general_knowledge",
    "mxbench_phrase_relatedness",
    "mxbench_social_iqa",
)
SEED = 1234
# Warnings lm-eval repeats on every call about choices made here on purpose, by emitting logger.
_EXPECTED_WARNINGS = {
    "lm_eval.models.huggingface": ("`pretrained` model kwarg is not of type `str`",  # the live model
                                   "Passed an already-initialized model through `pretrained`"),
    "lm_eval.api.task": ("Custom kwargs can be passed to `--metadata`",),  # loader.load_jsonl
}


@functools.lru_cache(maxsize=2)
def task_manager(include_defaults: bool):
    """lm-eval's task index with the shipped tasks registered; the full one takes ~10 s to build."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASK_DIR), include_defaults=include_defaults)


def shipped_tasks() -> list[str]:
    """Names (tasks and the ``mxbench_default`` tag) defined under ``bench/data/tasks/``."""
    return task_manager(False).all_tasks


def resolve_tasks(spec: str) -> list[str]:
    """``"default,arc_easy"`` -> task names, validated before any model is loaded.

    Shipped names are checked against the small local index (well under a second); lm-eval's
    full index (~10 s) is built only when some other name is asked for.
    """
    names: list[str] = []
    for part in (part.strip() for part in spec.split(",")):
        expanded = list(DEFAULT_TASKS) if part == "default" else [part] if part else []
        names += [name for name in expanded if name not in names]
    if not names:
        raise ValueError(f"no tasks in {spec!r}; use 'default' ({', '.join(DEFAULT_TASKS)}) or lm-eval task names")
    local = set(shipped_tasks())
    if any(name not in local for name in names):
        known = set(task_manager(True).all_tasks)
        for name in names:
            if name not in known:
                raise ValueError(f"unknown task {name!r}; run `lm-eval ls tasks` or use 'default' "
                                 f"({', '.join(DEFAULT_TASKS)})")
    return names


def evaluate_tasks(model: nn.Module, tokenizer, tasks: Sequence[str], limit: int | None = None,
                   batch_size: int = 8, device=None) -> dict[str, dict[str, float]]:
    """Run lm-eval on ``model`` as it is now; ``{task: {"acc": .., "acc_stderr": .., ...}}``.

    Call it inside ``spliced(...)`` or ``zero_ablated(...)`` to score the modified LM; the same
    model object can be evaluated any number of times. ``device`` moves the model there first
    (None: leave it where it is). Seeds are fixed, so a repeated call gives the same numbers.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    tasks = list(tasks)
    local = all(task in shipped_tasks() for task in tasks)
    if device is not None:
        model.to(device)
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"} if local else {}
    # Bootstrapped stderrs (perplexity) in-process: no worker pool forked from a process holding an LM.
    with _scoped_env(DISABLE_MULTIPROC="1", **offline), _quiet_lm_eval():
        # fp32 log-softmax: a bf16 LM's log-probs (on GPU) would be rounded in steps of ~0.06 per token.
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, softmax_dtype=torch.float32)
        output = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, task_manager=task_manager(not local), limit=limit,
            bootstrap_iters=1000, log_samples=False, random_seed=SEED, numpy_random_seed=SEED,
            torch_random_seed=SEED, fewshot_random_seed=SEED,
        )
    return {task: plain_metrics(values) | _n_samples(output, task) for task, values in output["results"].items()}


def plain_metrics(values: dict) -> dict[str, float]:
    """lm-eval's ``"acc,none"`` / ``"acc_stderr,none"`` keys -> ``"acc"`` / ``"acc_stderr"``.

    A metric reported under several filters (e.g. gsm8k's strict/flexible) keeps
    ``"metric,filter"`` so that none overwrites another; non-numbers ("N/A", aliases) are dropped.
    """
    numeric = {key: float(v) for key, v in values.items()
               if "," in key and isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics = [key.split(",", 1)[0] for key in numeric]
    return {(name if metrics.count(name) == 1 else key): v for key, name, v in zip(numeric, metrics, numeric.values())}


def _n_samples(output: dict, task: str) -> dict[str, float]:
    count = output.get("n-samples", {}).get(task, {}).get("effective")
    return {"n_samples": float(count)} if count is not None else {}


@contextlib.contextmanager
def _scoped_env(**values: str) -> Iterator[None]:
    """Set environment variables for the block only (user-set values win), then restore them."""
    previous = {key: os.environ.get(key) for key in values}
    for key, value in values.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)


class _DropMessages(logging.Filter):
    def __init__(self, texts: tuple[str, ...]) -> None:
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.texts)


@contextlib.contextmanager
def _quiet_lm_eval() -> Iterator[None]:
    """lm-eval logs every step at INFO; keep its warnings, minus the ones repeated by design."""
    root = logging.getLogger("lm_eval")
    level = root.level
    filters = [(logging.getLogger(name), _DropMessages(texts)) for name, texts in _EXPECTED_WARNINGS.items()]
    root.setLevel(logging.WARNING)
    for logger, drop in filters:
        logger.addFilter(drop)
    try:
        yield
    finally:
        root.setLevel(level)
        for logger, drop in filters:
            logger.removeFilter(drop)
