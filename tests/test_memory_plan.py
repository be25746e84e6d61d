"""The memory plan (bench/grouping.py) against memory actually used, on scaled-down shapes.

Each measurement runs in a fresh subprocess that resets its peak resident set (``clear_refs``)
before each piece of work and reads the new peak (``VmHWM``) after it: what the kernel saw, not
what the planner assumed. glibc is told to give every allocation above 64 KiB back to the
system when freed, so a freed tensor leaves no reusable heap behind to hide the next one's cost.

The plan must never count less than what was measured (an under-count trains too many cells
together and runs out of memory hours into a run); it may count more, within the margins
stated below (an over-count only costs extra groups, i.e. extra LM passes).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import methods
from bench import grouping
from methods.base import LayerSpec

ROOT = Path(__file__).resolve().parents[1]
ALL = methods.expand_method_names(["all"])

# A d = 64 layer at expansion 32 (a TC of 2,048 units): small enough for seconds, shaped like the real ones.
SPEC = LayerSpec(64, 192, True, "gelu_pytorch_tanh")
EXPANSION = 32
# State-dominated: a few tokens per step, so weights, gradients and AdamW's moments are nearly all of it.
# (A d = 256 layer: 4.2M parameters, 67 MB of optimiser-resident state.)
STATE_SPEC, STATE_BATCH = LayerSpec(256, 768, True, "gelu_pytorch_tanh"), 8
# Activation-dominated: 8,192 tokens of a 2,048-unit layer are 64 MB per [tokens, units] tensor,
# ten times the 4 MB of state.
ACTIVATION_BATCH = 8192

STATE_MARGIN = 1.35  # state-dominated: the plan within 35 % above the measured peak (it allows every method the
#                     temporaries of the one whose step needs most: the SAE's two encoder gradients)
ACTIVATION_MARGIN = 5.0  # the plan assumes 3 [tokens, expansion * d] fp32 tensors; a low-rank MoE's are narrower

_PROBE = r'''
import gc, json, sys
import torch

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

def measure(work):
    # Peak resident bytes above the current resident set while work() runs; its result is kept alive
    # until the peak is read.
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status("VmRSS")
    kept = work()
    peak = status("VmHWM") - base
    del kept
    gc.collect()
    return peak

from bench.activations import collect_mlp_io, shuffled_batches
from bench.evaluate import CrossEntropyEvaluator
from bench.train import OptimiserSettings, build_cell, train_step
from methods.base import LayerSpec
from tests.conftest import tiny_model
import transformers

torch.set_num_threads(1)
job = json.loads(sys.argv[1])
out = {}

def trained(method, spec, k, batch):
    torch.manual_seed(0)
    x, y = torch.randn(batch, spec.d_model), torch.randn(batch, spec.d_model)
    cell = build_cell(method, spec, k, job["expansion"], OptimiserSettings(lr=1e-3, warmup_steps=1), 0)
    for _ in range(2):  # the second step runs with every gradient and AdamW moment already allocated
        train_step(cell, x, y)
    assert cell.status == "ok", cell.error
    return cell

# Lazy one-time costs (kernels, thread pools, modules imported on first use) are paid here, before any
# measurement, on a layer too small to matter.
for method in job["methods"]:
    trained(method, LayerSpec(16, 48, True, "gelu_pytorch_tanh"), 2, 16)

for regime in ("state", "activations"):
    spec, batch, k = LayerSpec(**job[regime]["spec"]), job[regime]["batch"], job[regime]["k"]
    out[regime] = {m: measure(lambda: trained(m, spec, k, batch)) for m in job["methods"]}

import tempfile
from pathlib import Path
from bench.training_state import save_training_state

spec = LayerSpec(**job["state"]["spec"])
cell = trained("tc", spec, 8, 8)  # moments allocated: what a mid-training save serialises
with tempfile.TemporaryDirectory() as scratch:
    out["snapshot"] = measure(lambda: save_training_state(Path(scratch), [cell], 0, 0, {}))
    out["snapshot_file"] = sum(p.stat().st_size for p in Path(scratch).rglob("*.safetensors"))
del cell

buffers = job["buffers"]
d, rows, chunk = buffers["d"], buffers["buffer_tokens"], buffers["chunk"]

def shuffle():
    chunks = ((torch.randn(chunk, d), torch.randn(chunk, d)) for _ in range(10**6))
    for _ in shuffled_batches(chunks, buffers["train_tokens"], 512, rows, 0):
        pass

out["shuffle"] = measure(shuffle)
model = tiny_model("gemma2", d=64, vocab=buffers["vocab"])
contexts = torch.randint(0, buffers["vocab"], (4 * buffers["ce_batch"], buffers["context"]))
evaluator = CrossEntropyEvaluator(model, 2, contexts, buffers["ce_batch"])
evaluator.capture_clean()
evaluator.score(torch.nn.Identity())
out["ce"] = measure(lambda: evaluator.score(torch.nn.Identity()))
# A wide MLP, so its hidden states dominate one LM batch's forward.
config = transformers.LlamaConfig(num_hidden_layers=4, hidden_size=64, num_attention_heads=4, num_key_value_heads=1,
                                  intermediate_size=buffers["d_mlp"], vocab_size=96)
wide = transformers.LlamaForCausalLM(config).eval().requires_grad_(False)
ids = torch.randint(0, 96, (buffers["lm_batch"], buffers["context"]))
collect_mlp_io(wide, 2, ids[:1])
out["lm_batch"] = measure(lambda: collect_mlp_io(wide, 2, ids))
print(json.dumps(out))
'''

BUFFERS = dict(d=256, buffer_tokens=2**14, train_tokens=2**16, chunk=4096, vocab=2**15, ce_batch=2, context=64,
               d_mlp=8192, lm_batch=16)


def _spec_dict(spec: LayerSpec) -> dict:
    return dict(d_model=spec.d_model, d_mlp=spec.d_mlp, gated=spec.gated, activation=spec.activation)


@pytest.fixture(scope="module")
def measured() -> dict:
    """Every measurement, in one subprocess (one torch import): per method in both regimes, then the
    run's own buffers."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident set")
    job = dict(methods=ALL, expansion=EXPANSION, buffers=BUFFERS,
               state=dict(spec=_spec_dict(STATE_SPEC), batch=STATE_BATCH, k=8),
               activations=dict(spec=_spec_dict(SPEC), batch=ACTIVATION_BATCH, k=32))
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(job)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_optimiser_state_is_counted_in_full_for_every_method(measured):
    """With a handful of tokens per step, the peak is weights + gradients + AdamW's two moments."""
    for method in ALL:
        planned = grouping.cell_bytes(method, STATE_SPEC, 8, EXPANSION, STATE_BATCH)
        peak = measured["state"][method]
        assert peak <= planned <= STATE_MARGIN * peak, (
            f"{method}: planned {planned / 2**20:.1f} MiB, measured {peak / 2**20:.1f} MiB")


def test_one_batch_of_activations_is_never_under_counted(measured):
    """8,192 tokens through a 2,048-unit layer: the activations, not the state, set the peak."""
    for method in ALL:
        planned = grouping.cell_bytes(method, SPEC, 32, EXPANSION, ACTIVATION_BATCH)
        peak = measured["activations"][method]
        assert peak <= planned <= ACTIVATION_MARGIN * peak, (
            f"{method}: planned {planned / 2**20:.1f} MiB, measured {peak / 2**20:.1f} MiB")


def test_the_runs_own_buffers_are_counted_at_their_peaks(measured):
    """Shuffle buffer, one LM batch's forward and one CE batch's logits, each against its planned term
    (the other two terms zeroed by the settings): never under, at most 40 % over."""
    job = BUFFERS
    spec = LayerSpec(job["d"], job["d_mlp"])
    terms = dict(train_tokens=job["train_tokens"], buffer_tokens=job["buffer_tokens"], lm_batch_size=0,
                 ce_batch_size=0, context_length=job["context"])
    planned = {
        "shuffle": grouping.run_overhead_bytes(spec, job["vocab"], 4, **terms),
        "ce": grouping.run_overhead_bytes(spec, job["vocab"], 4, **{**terms, "buffer_tokens": 0,
                                                                    "ce_batch_size": job["ce_batch"]}),
        "lm_batch": grouping.run_overhead_bytes(LayerSpec(64, job["d_mlp"]), job["vocab"], 4,
                                                **{**terms, "buffer_tokens": 0, "lm_batch_size": job["lm_batch"]}),
    }
    for name, value in planned.items():
        assert measured[name] <= value <= 1.4 * measured[name], (
            f"{name}: planned {value / 2**20:.1f} MiB, measured {measured[name] / 2**20:.1f} MiB")


def _context(**settings):
    """What plan_run_groups reads of a run: its settings, model (for vocabulary and dtype), layer and device."""
    from types import SimpleNamespace

    from bench.config import preset_config
    from tests.conftest import tiny_model

    cfg = preset_config("smoke", **settings)
    return SimpleNamespace(cfg=cfg, model=tiny_model("llama"), spec=SPEC, device=torch.device("cpu"))


def test_the_runs_buffers_come_out_of_the_cells_budget(monkeypatch, capsys):
    """Free memory for three and a half cells plus the buffers (after HEADROOM): three per
    group, not the four that would fit if the buffers were forgotten; the note says what that costs."""
    ctx = _context(ks=[4, 8, 16, 32], methods=["tc"], buffer_tokens=2**16, train_tokens=2**20, batch_size=256)
    cells = [("tc", k) for k in ctx.cfg.ks]
    size = grouping.cell_bytes("tc", SPEC, 32, ctx.cfg.expansion, 256)  # K does not change a TC's size
    overhead = grouping.run_overhead_bytes(SPEC, 96, 4, train_tokens=2**20, buffer_tokens=2**16,
                                           lm_batch_size=ctx.cfg.lm_batch_size, ce_batch_size=ctx.cfg.ce_batch_size,
                                           context_length=ctx.cfg.context_length)
    assert overhead > size  # else forgetting it would not change the grouping
    monkeypatch.setattr(grouping, "free_memory",
                        lambda device: int((3.5 * size + overhead) / grouping.HEADROOM))
    groups = grouping.plan_run_groups(ctx, cells)
    assert sorted(map(len, groups)) == [1, 3]
    assert "2 groups of 3/1 cells (2 LM passes over the training data, one per group)" in capsys.readouterr().err
    ctx.cfg.activation_cache = "/somewhere"
    grouping.plan_run_groups(ctx, cells)
    assert "one LM pass in all: later groups read the activation cache" in capsys.readouterr().err


def test_a_given_budget_is_the_cells_alone_and_buffers_larger_than_memory_are_refused(monkeypatch):
    ctx = _context(methods=["tc"], memory_budget_gb=100.0, buffer_tokens=2**21, train_tokens=2**22)
    monkeypatch.setattr(grouping, "free_memory", lambda device: 2**30)
    assert len(grouping.plan_run_groups(ctx, [("tc", 16), ("tc", 64)])) == 1  # --memory-budget-gb as given
    ctx.cfg.memory_budget_gb = None  # 2M rows x d = 64 x fp32, x and y: 1 GiB before any copy
    with pytest.raises(grouping.PlanError, match=r"shuffle buffer.*lower --buffer-tokens \(2097152\)"):
        grouping.plan_run_groups(ctx, [("tc", 16)])


def test_a_cell_larger_than_the_budget_trains_alone_and_says_so(capsys):
    groups = grouping.plan_cell_groups([("tc", 4), ("mxd", 4)], SPEC, EXPANSION, 256, budget=2**20,
                                       device=torch.device("cpu"))
    assert sorted(map(len, groups)) == [1, 1]
    err = capsys.readouterr().err
    assert "2 of the cells need more than the 0.0 GiB budget" in err and "may run out of memory" in err


def test_gemma_2b_refuses_an_mxd_at_the_smoke_budget_before_anything_loads():
    """gemma-2b's MLP is 8 d wide, so an MxD's dense branch (2 d H = 67,108,864 weights) alone spends a TC
    budget of expansion 8 (2 d 8d + 8d + d = 67,127,296): no parameters are left for experts."""
    from bench.model_shapes import architecture_layer

    layer, spec = architecture_layer("gemma-2b")
    assert (layer, spec.d_model, spec.d_mlp, spec.gated) == (9, 2048, 16384, True)  # the published config
    cells = [(m, k) for m in ALL for k in (16, 64)]
    with pytest.raises(grouping.PlanError, match=r"^mxd K=16 cannot be built at --expansion 8 on a layer of width "
                                                 r"2048 with an MLP of 16384: .*no parameters for experts"):
        grouping.check_cells(cells, spec, 8)
    grouping.check_cells(cells, spec, 32)  # the paper's budget fits every method
    grouping.check_cells([c for c in cells if not c[0].startswith("mxd")], spec, 8)


def test_a_training_state_save_costs_no_copy_of_the_state(measured):
    """A mid-training save writes the weights and both AdamW moments from their own memory, so the planner
    reserves nothing for it: its peak stays under a tenth of what it writes (a serialised copy, as
    safetensors.torch.save makes, would be the whole file, twice over as once measured)."""
    assert measured["snapshot_file"] > 40 * 2**20  # a TC of 4.2M weights: weights and two moments
    assert measured["snapshot"] < 0.1 * measured["snapshot_file"], (
        f"the save's peak was {measured['snapshot'] / 2**20:.1f} MiB for a {measured['snapshot_file'] / 2**20:.1f} MiB file")


def test_bench_run_refuses_buffers_larger_than_memory_before_the_heldout_pass(tiny_model_dir, corpus_file,
                                                                               tmp_path, monkeypatch, capsys):
    """The harness checks the run's own buffers before it builds the eval set (an LM pass over the
    held-out tokens), so a hopeless --buffer-tokens costs seconds, not a pass."""
    from bench import harness
    from bench.cli import main

    monkeypatch.setattr(grouping, "free_memory", lambda device: 1024)  # 1 KiB free
    monkeypatch.setattr(harness, "build_eval_set", lambda ctx: pytest.fail("the eval set was built"))
    code = main(["run", "--model", str(tiny_model_dir), "--dataset", str(corpus_file), "--methods", "tc",
                 "--k", "2", "--expansion", "8", "--context-length", "16", "--tokens", "2048",
                 "--results-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "the run's own buffers need about" in err and "--buffer-tokens" in err, err
