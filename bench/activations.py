"""Token contexts -> (MLP input, MLP output) pairs at one layer, shuffled across documents.

The forward stops as soon as layer L's MLP has run (a hook raises), so collection never pays
for the layers above L or the LM head.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from bench.data import DataError
from bench.models import mlp_module


class _StopForward(Exception):
    pass


@torch.no_grad()
def collect_mlp_io(model: nn.Module, layer: int, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mlp_input, mlp_output) of layer ``layer`` for every token: two [tokens, d] fp32 tensors."""
    captured: dict[str, torch.Tensor] = {}

    def hook(module, args, output):
        captured["x"], captured["y"] = args[0], output
        raise _StopForward

    handle = mlp_module(model, layer).register_forward_hook(hook)
    try:
        model(input_ids=input_ids.to(model.device), use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if "x" not in captured:
        raise RuntimeError(f"layer {layer}'s MLP never ran during the forward")
    return tuple(t.reshape(-1, t.shape[-1]).float() for t in (captured["x"], captured["y"]))  # type: ignore[return-value]


def collect_all(model: nn.Module, layer: int, contexts: torch.Tensor, lm_batch_size: int,
                on_batch: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Collect every token of ``contexts`` ([n, T]) in LM batches; for held-out evaluation."""
    xs, ys = [], []
    for batch in contexts.split(lm_batch_size):
        x, y = collect_mlp_io(model, layer, batch)
        xs.append(x)
        ys.append(y)
        if on_batch:
            on_batch(batch.numel())
    return torch.cat(xs), torch.cat(ys)


def lm_chunks(model: nn.Module, layer: int, contexts: Iterator[torch.Tensor],
              lm_batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) of ``lm_batch_size`` contexts at a time, collected from the LM, until contexts run out."""
    while True:
        batch = [c for _, c in zip(range(lm_batch_size), contexts)]
        if not batch:
            return
        yield collect_mlp_io(model, layer, torch.stack(batch))


def shuffled_batches(chunks: Iterator[tuple[torch.Tensor, torch.Tensor]], n_tokens: int, batch_size: int,
                     buffer_tokens: int, seed: int,
                     device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``n_tokens`` worth of (x, y) training batches drawn from a shuffle buffer.

    ``chunks`` is any source of (x, y) tensors in document order: the LM (``lm_chunks``) or an
    activation cache. The buffer is refilled whenever half of it has been served, then
    shuffled, so consecutive batches mix many documents (SAE practice). Ends with a short
    final batch if ``n_tokens`` is not a multiple of ``batch_size``.
    """
    generator = torch.Generator().manual_seed(seed)
    pool_x = pool_y = None
    served, exhausted = 0, False
    while served < n_tokens:
        fresh_x, fresh_y = [], []
        have = 0 if pool_x is None else len(pool_x)
        # Never draw more than the run still needs: a small run must not fill a big buffer.
        target = min(buffer_tokens, n_tokens - served)
        while have < target and not exhausted:
            chunk = next(chunks, None)
            if chunk is None:
                exhausted = True
                break
            fresh_x.append(chunk[0].to(device, torch.float32))
            fresh_y.append(chunk[1].to(device, torch.float32))
            have += len(chunk[0])
        if fresh_x:
            pool_x = torch.cat(([pool_x] if pool_x is not None else []) + fresh_x)
            pool_y = torch.cat(([pool_y] if pool_y is not None else []) + fresh_y)
        if pool_x is None or len(pool_x) == 0:
            raise DataError(f"the training split ran out after {served:,} of the {n_tokens:,} tokens still needed; "
                            "ask for fewer --tokens or use a larger --dataset")
        order = torch.randperm(len(pool_x), generator=generator).to(pool_x.device)
        pool_x, pool_y = pool_x[order], pool_y[order]
        serve = len(pool_x) if exhausted else max(batch_size, len(pool_x) // 2)
        serve = min(serve, n_tokens - served)
        for start in range(0, serve, batch_size):
            end = min(start + batch_size, serve)
            yield pool_x[start:end], pool_y[start:end]
        served += serve
        pool_x, pool_y = pool_x[serve:], pool_y[serve:]
