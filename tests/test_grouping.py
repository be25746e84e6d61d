from bench.grouping import BYTES_PER_PARAM, cell_bytes, plan_groups
from methods import create
from methods.base import LayerSpec


def test_groups_are_the_fewest_first_fit_decreasing():
    sizes = {("a", 1): 5, ("b", 1): 4, ("c", 1): 3, ("d", 1): 2}
    groups = plan_groups(list(sizes), sizes, budget=7)
    assert sorted(map(sorted, groups)) == [[("a", 1), ("d", 1)], [("b", 1), ("c", 1)]]
    assert plan_groups(list(sizes), sizes, budget=100) == [list(sizes)]
    assert plan_groups([("a", 1)], sizes, budget=1) == [[("a", 1)]]  # too big still runs, alone


def test_cell_bytes_counts_optimiser_state_from_the_closed_form():
    """Optimiser-resident state (weight, gradient, two AdamW moments) plus weight-sized temporaries of
    the largest tensor, before any activation; activations grow with the batch."""
    from bench.grouping import PARAM_TEMPORARIES

    spec = LayerSpec(32, 96)
    for method in ("tc", "mxd"):
        layer = create(method, spec, k=4, expansion=8)
        largest = max(p.numel() for p in layer.parameters())
        expected = layer.n_params() * BYTES_PER_PARAM + int(PARAM_TEMPORARIES * largest * 4)
        assert cell_bytes(method, spec, 4, 8, batch_size=0) == expected
        assert cell_bytes(method, spec, 4, 8, batch_size=64) > expected


def test_gpu_budget_counts_what_torch_has_cached_as_free(monkeypatch):
    import torch

    from bench import grouping

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 30 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 12 * gib)
    assert grouping.memory_budget(torch.device("cuda")) == int((10 + 30 - 12) * gib * grouping.HEADROOM)
