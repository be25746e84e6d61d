"""Interrupted runs: a SIGKILL mid-training and a Ctrl-C mid-evaluation both resume without loss."""
import json
import os
import signal
import subprocess
import sys
import time


from bench.cli import main
from bench.results import RunStore

ARGS = ["--methods", "tc,mxd", "--k", "2", "--context-length", "16", "--batch-size", "64", "--expansion", "8",
        "--eval-tokens", "128", "--ce-tokens", "64", "--warmup-steps", "2", "--run-name", "r", "--no-figures"]


def _command(tmp_path, model_dir, corpus, tokens):
    return ["run", "--model", str(model_dir), "--dataset", str(corpus), "--results-dir", str(tmp_path),
            "--tokens", str(tokens), *ARGS]


def test_sigkill_mid_training_then_rerun_completes(tmp_path, tiny_model_dir):
    from tests.conftest import make_documents

    corpus = tmp_path / "big.jsonl"  # room for the tokens skipped with the lost shuffle buffer
    corpus.write_text("".join(json.dumps(d) + "\n" for d in make_documents(4000, seed=1)))
    tokens = 40_000
    command = _command(tmp_path, tiny_model_dir, corpus, tokens) + ["--checkpoint-minutes", "0"]
    child = subprocess.Popen([sys.executable, "-m", "bench.cli", *command], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    progress = tmp_path / "r" / "checkpoints" / "_training" / "progress.json"
    deadline = time.monotonic() + 300  # generous: CI machines may be loaded
    while time.monotonic() < deadline and child.poll() is None:
        if progress.is_file() and json.loads(progress.read_text())["tokens_served"] >= 640:  # ten batches in
            break
        time.sleep(0.05)
    assert child.poll() is None, f"the run ended before it could be killed: {child.stderr.read()[-2000:]}"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    served = json.loads(progress.read_text())["tokens_served"]
    assert 0 < served < tokens
    assert RunStore(tmp_path / "r").rows() == []  # nothing half-written

    rerun = subprocess.run([sys.executable, "-m", "bench.cli", *command[:-2], "--checkpoint-minutes", "10"],
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming 2 cells at" in rerun.stderr
    rows = RunStore(tmp_path / "r").rows()
    assert sorted(r["method"] for r in rows) == ["mxd", "tc"]
    assert all(r["status"] == "ok" and r["trained_tokens"] == tokens for r in rows), [
        (r["method"], r["status"], r["trained_tokens"], r.get("error")) for r in rows]
    assert all(r["resumed_at_tokens"] == served for r in rows), "resumed rows say where they resumed"
    assert not progress.parent.exists(), "training state is removed once every cell is written"


def test_interrupt_during_evaluation_keeps_finished_rows_and_trained_state(
        tmp_path, tiny_model_dir, corpus_file, monkeypatch, capsys):
    import bench.cell_eval as cell_eval

    real = cell_eval.evaluate_cell
    calls = []

    def interrupt_second(ctx, cell, *args):
        calls.append(cell.method)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(ctx, cell, *args)

    monkeypatch.setattr(cell_eval, "evaluate_cell", interrupt_second)
    assert main(_command(tmp_path, tiny_model_dir, corpus_file, 1024)) == 130
    assert "re-run the same command to resume" in capsys.readouterr().err
    first_rows = RunStore(tmp_path / "r").rows()
    assert len(first_rows) == 1

    monkeypatch.setattr(cell_eval, "evaluate_cell", real)
    assert main(_command(tmp_path, tiny_model_dir, corpus_file, 1024)) == 0
    assert "resuming 1 cells at 1,024 of 1,024 tokens" in capsys.readouterr().err
    rows = RunStore(tmp_path / "r").rows()
    assert len(rows) == 2 and rows[0] == first_rows[0]
    assert all(r["trained_tokens"] == 1024 for r in rows)


def test_state_for_other_settings_is_not_restored(tmp_path, tiny_model_dir, corpus_file, monkeypatch, capsys):
    import bench.cell_eval as cell_eval

    monkeypatch.setattr(cell_eval, "evaluate_cell", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(_command(tmp_path, tiny_model_dir, corpus_file, 1024)) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert main(_command(tmp_path, tiny_model_dir, corpus_file, 2048)) == 0
    assert "resuming" not in capsys.readouterr().err


def test_ctrl_c_mid_training_saves_the_state(tmp_path, tiny_model_dir, corpus_file, monkeypatch, capsys):
    import bench.train as train

    real = train.train_step
    steps = []

    def interrupt_at_five(cell, x, y):
        steps.append(1)
        if len(steps) == 10:  # two cells per batch: five batches in
            raise KeyboardInterrupt
        real(cell, x, y)

    monkeypatch.setattr(train, "train_step", interrupt_at_five)
    assert main(_command(tmp_path, tiny_model_dir, corpus_file, 1024)) == 130
    saved = json.loads((tmp_path / "r" / "checkpoints" / "_training" / "progress.json").read_text())
    assert saved["tokens_served"] == 4 * 64
    monkeypatch.undo()
    capsys.readouterr()
    assert main(_command(tmp_path, tiny_model_dir, corpus_file, 1024)) == 0
    assert "resuming 2 cells at 256 of 1,024 tokens" in capsys.readouterr().err
    assert {r["resumed_at_tokens"] for r in RunStore(tmp_path / "r").rows()} == {256}
