"""The training bar: a loss readout that shows every cell in turn, a word while the shuffle buffer
fills, and an ETA from the average rate (which counts the fills) rather than the latest burst."""
from __future__ import annotations

import io
import math
import re

import pytest
from tqdm import tqdm

from bench.logs import BufferFill, loss_postfix, progress

LOSSES = [("tc/16", 0.40), ("stc/16", 0.10), ("sae/16", 0.30), ("mxd/16", 0.20), ("mxd/64", 0.95)]


def test_up_to_three_cells_are_each_shown():
    assert loss_postfix(LOSSES[:3], turn=7) == "tc/16:0.400 stc/16:0.100 sae/16:0.300"


def test_many_cells_are_summarised_with_the_extremes_named():
    text = loss_postfix(LOSSES, turn=0)
    assert text.startswith("loss min 0.100 (stc/16) med 0.300 max 0.950 (mxd/64)")  # sorted: .1 .2 .3 .4 .95


def test_every_cell_takes_its_turn():
    shown = {re.search(r"\| (\S+):\S+ \[\d/5\]$", loss_postfix(LOSSES, turn)).group(1) for turn in range(5)}
    assert shown == {name for name, _ in LOSSES}  # the old readout showed only the first four, forever


def test_a_diverged_cell_is_counted_not_hidden():
    losses = LOSSES[:3] + [("mxd/16", math.nan), ("mxd/64", math.inf)]
    text = loss_postfix(losses, turn=3)
    assert "max 0.400 (tc/16)" in text and "2 not finite" in text and "mxd/16:nan" in text


def _bar(total: int, **kwargs) -> tuple[tqdm, io.StringIO]:
    out = io.StringIO()
    return tqdm(total=total, file=out, mininterval=0, **kwargs), out


def test_buffer_fill_is_shown_until_the_first_step_then_refills_are():
    bar, out = _bar(100_000)
    fill = BufferFill(bar, first_target=32_768, interval=0)
    chunks = [(list(range(4096)), None)] * 3
    assert len(list(fill.watch(iter(chunks)))) == 3
    assert "filling the shuffle buffer: 12.3k/32.8k activation rows" in out.getvalue()
    fill.served()
    list(fill.watch(iter(chunks[:1])))
    assert out.getvalue().rstrip().endswith("refilling the shuffle buffer: 4.10k activation rows]")
    bar.close()


def test_eta_counts_the_time_spent_filling(monkeypatch: pytest.MonkeyPatch):
    """10 s of filling, then 100 tokens/s for 5 s: 500 of 2,000 tokens done in 15 s. The honest ETA
    is 1,500 / (500 / 15) = 45 s; the latest burst alone (100/s) would promise 15 s."""
    clock = [0.0]
    out = io.StringIO()
    monkeypatch.setattr("bench.logs.tqdm", lambda **kw: tqdm(file=out, mininterval=0, **kw))
    bar = progress("training", 2000, smoothing=0)
    bar._time = lambda: clock[0]
    bar.start_t = bar.last_print_t = 0.0
    clock[0] = 10.0
    for _ in range(5):
        clock[0] += 1.0
        bar.update(100)
    assert re.search(r"<00:45", str(bar)), str(bar)
    bar.close()


def test_a_resumed_bar_does_not_count_earlier_work_in_its_rate(monkeypatch: pytest.MonkeyPatch):
    clock = [0.0]
    out = io.StringIO()
    monkeypatch.setattr("bench.logs.tqdm", lambda **kw: tqdm(file=out, mininterval=0, **kw))
    bar = progress("training", 2000, initial=1000, smoothing=0)
    bar._time = lambda: clock[0]
    bar.start_t = bar.last_print_t = 0.0
    clock[0] = 10.0
    bar.update(100)  # 100 tokens in 10 s: 900 left take 90 s (counting the 1,000 resumed ones: 8 s)
    assert re.search(r"<01:30", str(bar)), str(bar)
    bar.close()
