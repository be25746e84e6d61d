"""Units never selected during training (bench.unit_usage): counted per cell over the whole training
stream from the codes each step returns, reported in rows with a frequency histogram, kept on resume."""
import pytest
import torch
from safetensors.torch import load, save

from bench.rows import cell_row
from bench.train import OptimiserSettings, build_cell, train_cells, train_step
from bench.unit_usage import HISTOGRAM_BUCKETS, dead_mask, frequency_histogram, usage_fields
from methods.base import LayerSpec, SparseCodes

SPEC = LayerSpec(d_model=8, d_mlp=16)
# Each token's TopK (K = 2) of a 6-unit layer: (indices, values). Unit 3 is picked only with value 0
# (selected by the TopK, clipped by ReLU: it wrote nothing), so it is never *selected*.
PICKS = [([0, 1], [1.0, 2.0]), ([1, 2], [0.5, 0.1]), ([4, 3], [3.0, 0.0]), ([5, 0], [1.0, 1.0]),
         ([5, 1], [2.0, 0.0])]
EXPECTED_COUNTS = [2, 2, 1, 0, 1, 2]  # read off PICKS by hand: unit 1 twice (its value 0 on the last token)


def _scripted_cell(**kwargs):
    """A 6-unit TC whose codes follow PICKS token by token (its estimate stays the layer's own)."""
    cell = build_cell("tc", SPEC, 2, 1, OptimiserSettings(warmup_steps=1), seed=0, width=6, **kwargs)
    layer = cell.layer

    def scripted(x):
        picks = [PICKS[int(t)] for t in x[:, 0].round().long()]  # feature 0 of x names the token's picks
        codes = SparseCodes(torch.tensor([p[1] for p in picks]), torch.tensor([p[0] for p in picks]))
        return layer(x)[0], codes

    cell.forward = scripted
    return cell


def _stream(n_repeats=1):
    x = torch.zeros(len(PICKS) * n_repeats, SPEC.d_model)
    x[:, 0] = torch.arange(len(PICKS)).repeat(n_repeats).float()
    return x, torch.randn(len(x), SPEC.d_model)


def test_a_unit_the_topk_never_selects_is_counted_as_never_selected():
    cell = _scripted_cell()
    x, y = _stream()
    train_cells([cell], [(x[:3], y[:3]), (x[3:], y[3:])])
    assert cell.selection_counts.tolist() == EXPECTED_COUNTS
    fields = usage_fields(cell.selection_counts, int(cell.counted_tokens), cell.tokens)
    assert int(cell.counted_tokens) == cell.tokens == 5 and fields["selection_counted_tokens"] == 5
    assert fields["never_selected"] == 1 and fields["never_selected_fraction"] == pytest.approx(1 / 6)
    assert sum(fields["selection_frequency_histogram"]) == 6


def test_counts_cover_the_whole_stream_and_survive_an_out_of_memory_retry():
    """Micro-batches count each token once; a step abandoned for an OOM after its first piece (and
    retried in smaller pieces) counts nothing twice."""
    steady, flaky = _scripted_cell(), _scripted_cell()
    scripted, calls = flaky.forward, []

    def forward_failing_on_its_second_piece(x):
        calls.append(len(x))
        if len(calls) == 2:
            raise torch.OutOfMemoryError("simulated")
        return scripted(x)

    flaky.forward, flaky.micro_batches = forward_failing_on_its_second_piece, 2
    x, y = _stream(n_repeats=4)  # 20 tokens in batches of 10
    batches = [(x[:10], y[:10]), (x[10:], y[10:])]
    train_cells([steady], batches)
    train_cells([flaky], batches)
    assert calls[:3] == [5, 5, 3] and flaky.micro_batches == 4  # the first piece ran, then the retry
    assert steady.selection_counts.tolist() == flaky.selection_counts.tolist() == [4 * c for c in EXPECTED_COUNTS]


def test_tokens_since_selected_mark_units_idle_for_a_window_as_dead():
    cell = _scripted_cell()
    x, y = _stream()
    train_step(cell, x[:2], y[:2])  # units 0, 1, 2 selected
    train_step(cell, x[2:4], y[2:4])  # units 4, 5, 0 selected
    assert cell.tokens_since_selected.tolist() == [0, 2, 2, 4, 0, 0]
    assert dead_mask(cell.tokens_since_selected, 3).tolist() == [False, False, False, True, False, False]
    assert dead_mask(cell.tokens_since_selected, 2).tolist() == [False, True, True, True, False, False]


def test_the_frequency_histogram_buckets_by_decade():
    assert HISTOGRAM_BUCKETS[0] == "never" and HISTOGRAM_BUCKETS[-1] == "1e-1..1" and len(HISTOGRAM_BUCKETS) == 10
    # f = 0, 1e-3, 1e-2, 1e-1, 0.999, 1, 0.05 -> never, [1e-3, 1e-2), [1e-2, 1e-1) x2, [1e-1, 1] x3
    counts = torch.tensor([0, 1, 10, 100, 999, 1000, 50])
    assert frequency_histogram(counts, 1000) == [1, 0, 0, 0, 0, 0, 0, 1, 2, 3]
    # the bottom edges: f = 1e-9 falls below 1e-8; f = 1e-8 exactly opens its decade
    assert frequency_histogram(torch.tensor([1]), 10**9) == [0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert frequency_histogram(torch.tensor([1]), 10**8) == [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    assert frequency_histogram(torch.tensor([9_999]), 10**8) == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0]  # [1e-5, 1e-4)


def test_a_cells_row_reports_never_selected_next_to_the_eval_dead_units():
    cell = _scripted_cell()
    x, y = _stream(n_repeats=2)
    train_cells([cell], [(x, y)])
    row = cell_row(cell, {"model": "tiny"})
    assert row["never_selected"] == 1 and row["never_selected_fraction"] == pytest.approx(1 / 6)
    # counts 4, 4, 2, 0, 2, 4 of 10 tokens: every unit but unit 3 in the top decade [1e-1, 1]
    assert row["selection_frequency_histogram"] == [1, 0, 0, 0, 0, 0, 0, 0, 0, 5]


def test_counts_that_miss_part_of_the_stream_are_not_reported_as_never_selected():
    """A resumed cell whose counts were not restored has counted only the tokens since the resume: its
    row says so (selection_counted_tokens) instead of reporting an inflated never_selected."""
    cell = _scripted_cell()
    x, y = _stream(n_repeats=2)
    train_cells([cell], [(x, y)])
    cell.load_extra_state({"counted_tokens": torch.tensor(4)})  # as if 6 of the 10 tokens went uncounted
    row = cell_row(cell, {"model": "tiny"})
    assert row["selection_counted_tokens"] == 4 and row["trained_tokens"] == 10
    assert "never_selected" not in row and "selection_frequency_histogram" not in row


def test_the_counts_survive_a_save_and_restore_of_the_cell_state():
    cell = _scripted_cell()
    x, y = _stream(n_repeats=3)
    train_cells([cell], [(x[:7], y[:7]), (x[7:], y[7:])])
    blob = save({f"cell.{k}": v for k, v in cell.extra_state().items()})  # what a training-state save writes
    resumed = _scripted_cell()
    resumed.load_extra_state({k[len("cell."):]: v for k, v in load(blob).items()})
    assert torch.equal(resumed.selection_counts, cell.selection_counts)
    assert torch.equal(resumed.tokens_since_selected, cell.tokens_since_selected)
    assert int(resumed.counted_tokens) == 15
    train_cells([resumed], [(x[:5], y[:5])])
    assert resumed.selection_counts.tolist() == [4 * c for c in EXPECTED_COUNTS]
    with pytest.raises(ValueError, match="saved selection_counts has shape"):
        resumed.load_extra_state({"selection_counts": torch.zeros(5, dtype=torch.long)})


def test_the_counts_survive_a_training_state_resume(tmp_path):
    from bench.training_state import load_progress, restore_cells, save_training_state

    cell = _scripted_cell()
    x, y = _stream(n_repeats=2)
    train_cells([cell], [(x, y)])
    save_training_state(tmp_path, [cell], len(x), len(x), {"key": 1})
    resumed = _scripted_cell()
    restore_cells(tmp_path, [resumed], load_progress(tmp_path, [resumed], {"key": 1}))
    assert resumed.selection_counts.tolist() == [2 * c for c in EXPECTED_COUNTS]
    assert torch.equal(resumed.tokens_since_selected, cell.tokens_since_selected)
    assert int(resumed.counted_tokens) == resumed.tokens == 10
