"""Resume bookkeeping: which requested cells still need training, and which finished cells need
task scores that this run asks for. Finished cells are never trained twice."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

import methods
from bench.config import lr_for
from bench.logs import note
from bench.rescore import lacks_tasks
from bench.results import cell_key
from bench.rows import first_difference
from bench.run_context import RunContext
from bench.validation import UsageError


@dataclass
class RunPlan:
    requested: int  # (method, K) cells the run asks for
    wanted: list[tuple[str, int]] = field(default_factory=list)  # still to train
    unscored: list[dict] = field(default_factory=list)  # finished rows lacking requested task scores

    @property
    def nothing_to_do(self) -> bool:
        return not self.wanted and not self.unscored


def planned_row(ctx: RunContext, method: str, k: int) -> dict:
    """What the row of cell (method, K) will hold of its identity, before anything is trained; the
    constructor runs on the meta device, so its checks (K <= units, ...) cost no memory."""
    with torch.device("meta"):
        layer = methods.create(method, ctx.spec, k=k, expansion=ctx.cfg.expansion)
    return {**ctx.base_row, "method": method, "k": k, "lr": lr_for(ctx.cfg, method),
            "method_config": layer.to_config()["config"]}


def check_same_settings(ctx: RunContext, finished: dict, planned: dict) -> None:
    """A finished cell with other settings is never reported as this run's result."""
    difference = first_difference(finished, planned)
    if difference:
        raise UsageError(f"{ctx.run_dir} already holds {planned['method']} K={planned['k']} trained with other "
                         f"settings ({difference}); give this run another --run-name, or delete that run directory")


def plan_run(ctx: RunContext, method_names: list[str]) -> RunPlan:
    """Compare the requested cells with the run directory's finished rows."""
    base_row, cfg = ctx.base_row, ctx.cfg
    finished = {cell_key(row): row for row in ctx.store.rows() if row.get("status") == "ok"}
    requested = []
    for method in method_names:
        for k in cfg.ks:
            planned = planned_row(ctx, method, k)
            if cell_key(planned) in finished:
                check_same_settings(ctx, finished[cell_key(planned)], planned)
            requested.append((method, k, cell_key(planned)))
    plan = RunPlan(len(requested), wanted=[(m, k) for m, k, key in requested if key not in finished])
    plan.unscored = [finished[key] for _, _, key in requested
                     if key in finished and lacks_tasks(finished[key], base_row["task_names"], cfg.task_limit)]
    for row in [r for r in plan.unscored if not (r.get("checkpoint") and (ctx.run_dir / r["checkpoint"]).is_dir())]:
        note(f"cell {row['method']} K={row['k']} has no checkpoint to score tasks with; delete its row to retrain it")
        plan.unscored.remove(row)
    return plan
