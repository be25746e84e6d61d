"""W&B steps keep rising across memory groups: a later group's curves never land on an earlier one's steps."""
from __future__ import annotations

from bench.cli import main


def test_steps_are_monotonic_across_groups(tmp_path, tiny_model_dir, corpus_file, monkeypatch):
    import bench.logs

    logged: list[tuple[dict, int]] = []
    monkeypatch.setattr(bench.logs.MetricsSink, "__init__", lambda self, *a, **k: setattr(self, "_run", None))
    monkeypatch.setattr(bench.logs.MetricsSink, "log", lambda self, values, step=None: logged.append((values, step)))
    code = main(["run", "--model", str(tiny_model_dir), "--dataset", str(corpus_file), "--results-dir", str(tmp_path),
                 "--run-name", "r", "--methods", "tc,mxd", "--k", "2", "--tokens", "512", "--context-length", "16",
                 "--batch-size", "128", "--expansion", "8", "--eval-tokens", "128", "--ce-tokens", "64",
                 "--warmup-steps", "1", "--no-figures", "--memory-budget-gb", "0.000001"])  # one cell per group
    assert code == 0
    steps = [(next(iter(values)), step) for values, step in logged if step is not None]
    groups = {name.split("/")[1] for name, _ in steps}
    assert groups == {"tc", "mxd"}
    numbers = [step for _, step in steps]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), numbers
    assert max(numbers) == 2 * 512  # the second group's last batch
