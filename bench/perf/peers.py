"""The peer in ``bench perf``: SAELens's TopK SAE, trained by its own trainer step on our shapes.

Optional (``pip install 'mxbench[perf]'``); without it the comparison is skipped with a message.
"""
from __future__ import annotations

import statistics
from importlib.metadata import version
from typing import Any

import torch

from bench.perf.measure import Shape
from bench.perf.timing import PeakMemory, say, time_calls


def saelens_available() -> bool:
    try:
        import sae_lens  # noqa: F401
    except Exception:  # an incompatible install fails in many ways; all mean "no peer"
        return False
    return True


def measure_saelens(shape: Shape, k: int, tokens: int, warmup: int, steps: int, device: torch.device,
                    autocast: bool, sparse: bool) -> dict[str, Any]:
    """SAELens's own trainer step (``SAETrainer._train_step``: forward with aux loss, backward,
    grad clipping, Adam, LR schedule) for a TopK SAE of the TC's width, on the same x."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    d, width = shape.spec.d_model, shape.expansion * shape.spec.d_model
    x = torch.randn(tokens, d, generator=torch.Generator().manual_seed(0)).to(device)
    with PeakMemory(device) as memory:
        torch.manual_seed(0)
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=width, k=k, dtype="float32", device=str(device),
                                                    use_sparse_activations=sparse))
        trainer = SAETrainer(SAETrainerConfig(total_training_samples=tokens * 10_000, train_batch_size_samples=tokens,
                                              device=str(device), autocast=autocast, lr_end=3e-4),
                             sae, data_provider=iter(()))
        times = time_calls(lambda: trainer._train_step(sae, x), warmup, steps, device)
    step_s = statistics.median(times)
    return {"shape": shape.name, "k": k, "peer": _saelens_name(sparse), "status": "ok", "tokens_per_step": tokens,
            "timed_steps": steps,
            "step_s": step_s, "tokens_per_s": tokens / step_s, "peak_memory_bytes": memory.bytes}


def _saelens_name(sparse: bool) -> str:
    return f"sae-lens {version('sae-lens')} TopKTrainingSAE" + (" use_sparse_activations" if sparse else "")


def peer_comparison(shapes: list[Shape], ks: list[int], train_rows: list[dict], settings: dict,
                    device: torch.device, autocast: bool) -> dict[str, Any]:
    if not saelens_available():
        return {"status": "skipped", "message": "SAELens is not installed: pip install 'mxbench[perf]' "
                "(or pip install sae-lens) to compare with it", "rows": []}
    ours = {(r["shape"], r["method"], r["k"]): r for r in train_rows if r.get("status") == "ok"}
    rows = []
    for shape in shapes:
        for k in ks:
            for sparse in (False, True):
                try:
                    peer = measure_saelens(shape, k, settings["tokens"][shape.name], settings["warmup"],
                                           settings["steps"][shape.name], device, autocast, sparse)
                except Exception as error:  # their code paths fail in their own ways; report, go on
                    rows.append({"shape": shape.name, "k": k, "peer": _saelens_name(sparse), "status": "failed",
                                 "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})
                    say(f"peer {_saelens_name(sparse)} {shape.name} K={k}: failed ({rows[-1]['error']})")
                    continue
                for method in ("tc", "sae"):
                    if (shape.name, method, k) in ours:
                        peer[f"{method}_speedup"] = ours[(shape.name, method, k)]["tokens_per_s"] / peer["tokens_per_s"]
                rows.append(peer)
                say(f"peer {peer['peer']} {shape.name} K={k}: {peer['tokens_per_s']:,.0f} tokens/s")
    return {"status": "ok", "message": "speedup = our tokens/s over SAELens's at the same shape, K and batch",
            "rows": rows}
