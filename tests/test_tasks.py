import importlib.util
import json
import math
import socket
from pathlib import Path

import pytest

from bench import tasks
from bench.splice import zero_ablated
from tests.conftest import tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def _build_script():
    spec = importlib.util.spec_from_file_location("build_tasks", ROOT / "scripts" / "build_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(task: str) -> list[dict]:
    lines = (tasks.TASK_DIR / f"{task}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama"), tiny_tokenizer()


def test_default_expands_to_the_shipped_tasks():
    assert tasks.resolve_tasks("default") == list(tasks.DEFAULT_TASKS)
    assert set(tasks.DEFAULT_TASKS) <= set(tasks.shipped_tasks())
    # duplicates collapse, order is kept, whitespace and empty parts are ignored
    assert tasks.resolve_tasks(" mxbench_wiki_ppl, default,,") == ["mxbench_wiki_ppl"] + [
        t for t in tasks.DEFAULT_TASKS if t != "mxbench_wiki_ppl"]
    assert tasks.resolve_tasks("mxbench_default") == ["mxbench_default"]  # the tag of the shipped set


def test_unknown_task_is_named_in_one_line(monkeypatch):
    local = tasks.task_manager(False)

    class FullIndex:  # stands in for lm-eval's full index, which takes ~10 s to build
        all_tasks = [*local.all_tasks, "lambada_openai"]

    monkeypatch.setattr(tasks, "task_manager", lambda include_defaults: FullIndex if include_defaults else local)
    with pytest.raises(ValueError) as error:
        tasks.resolve_tasks("mxbench_wiki_ppl,no_such_task_xyz")
    message = str(error.value)
    assert "'no_such_task_xyz'" in message and "lm-eval ls tasks" in message and "\n" not in message
    assert "mxbench_social_iqa" in message  # says what 'default' holds
    assert tasks.resolve_tasks("lambada_openai,default")[0] == "lambada_openai"  # lm-eval's own tasks pass
    with pytest.raises(ValueError, match="no tasks"):
        tasks.resolve_tasks(" , ")


@pytest.mark.parametrize("task", tasks.DEFAULT_TASKS)
def test_shipped_task_files_load_with_the_expected_fields(task):
    loader = importlib.util.spec_from_file_location("loader", tasks.TASK_DIR / "loader.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    data = module.load_jsonl(f"{task}.jsonl")["test"]
    assert data.num_rows == len(_rows(task))
    assert (tasks.TASK_DIR / f"{task}.yaml").read_text().count(f"task: {task}\n") == 1
    if task == "mxbench_wiki_cloze":
        assert 100 <= data.num_rows <= 300
        assert all(row["target"].isalpha() and row["context"] for row in data)
    elif task == "mxbench_wiki_ppl":
        assert 40 <= data.num_rows <= 150 and all(row["text"] for row in data)
    else:
        assert 40 <= data.num_rows <= 500
        assert all(0 <= row["label"] < len(row["choices"]) and row["text"] for row in data)


def test_wikipedia_tasks_use_only_held_out_documents():
    from bench.data import is_eval_document

    for task in ("mxbench_wiki_cloze", "mxbench_wiki_ppl"):
        titles = [row["title"] for row in _rows(task)]
        assert len(set(titles)) == len(titles) and all(is_eval_document(t) for t in titles)


def test_shipped_files_are_small_and_credited():
    total = sum(p.stat().st_size for p in tasks.TASK_DIR.iterdir())
    assert total < 3_000_000
    notice = (tasks.TASK_DIR / "NOTICE").read_text()
    assert "BIG-bench" in notice and "CC BY-SA" in notice and "Apache" in notice
    assert "Apache License" in (tasks.TASK_DIR / "LICENSE-APACHE-2.0.txt").read_text()


def test_tasks_run_through_lm_eval_offline_from_any_directory(llama, tmp_path, monkeypatch):
    model, tokenizer = llama
    monkeypatch.chdir(tmp_path)  # data paths must not depend on the working directory

    def no_network(*args, **kwargs):
        raise OSError("network access during an offline evaluation")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    scores = tasks.evaluate_tasks(model, tokenizer, list(tasks.DEFAULT_TASKS), limit=3, batch_size=2)
    assert set(scores) == set(tasks.DEFAULT_TASKS)
    assert {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"} <= set(scores["mxbench_social_iqa"])
    assert {"acc", "perplexity"} <= set(scores["mxbench_wiki_cloze"])
    assert {"word_perplexity", "byte_perplexity", "bits_per_byte"} <= set(scores["mxbench_wiki_ppl"])
    assert all(s["n_samples"] == 3 for s in scores.values())
    assert all(math.isfinite(v) for s in scores.values() for v in s.values())


def test_zero_ablation_is_live_and_the_clean_model_comes_back(llama):
    model, tokenizer = llama
    chosen = ["mxbench_wiki_ppl", "mxbench_wiki_cloze"]
    clean = tasks.evaluate_tasks(model, tokenizer, chosen, limit=4)
    with zero_ablated(model, 1):
        ablated = tasks.evaluate_tasks(model, tokenizer, chosen, limit=4)
    again = tasks.evaluate_tasks(model, tokenizer, chosen, limit=4)
    assert ablated["mxbench_wiki_ppl"]["word_perplexity"] != clean["mxbench_wiki_ppl"]["word_perplexity"]
    assert ablated["mxbench_wiki_cloze"]["perplexity"] != clean["mxbench_wiki_cloze"]["perplexity"]
    assert again == clean  # deterministic, and the splice left no trace


def test_a_bf16_model_is_scored_with_fp32_log_probabilities(monkeypatch):
    """On GPU the LM runs in bf16; its log-probs must not be rounded to bf16 (steps of ~0.06)."""
    import torch

    model, tokenizer = tiny_model("llama").to(torch.bfloat16), tiny_tokenizer()
    seen, log_softmax = [], torch.nn.functional.log_softmax

    def recording(input, *args, **kwargs):
        out = log_softmax(input, *args, **kwargs)
        seen.append((input.dtype, out.dtype))
        return out

    monkeypatch.setattr(torch.nn.functional, "log_softmax", recording)
    scores = tasks.evaluate_tasks(model, tokenizer, ["mxbench_wiki_cloze"], limit=2, batch_size=2)
    assert math.isfinite(scores["mxbench_wiki_cloze"]["perplexity"])
    assert seen and (torch.bfloat16, torch.float32) in seen and all(out == torch.float32 for _, out in seen)


def test_plain_metrics_drop_filters_and_non_numbers():
    values = {"alias": "t", "acc,none": 0.5, "acc_stderr,none": "N/A", "em,strict": 1, "em,flexible": 0}
    assert tasks.plain_metrics(values) == {"acc": 0.5, "em,strict": 1.0, "em,flexible": 0.0}


def test_bigbench_conversion_formats_prompts_and_subsamples_deterministically():
    build = _build_script()
    task = {"task_prefix": "Answer.", "example_output_prefix": "\nAnswer: ", "examples": [
        {"input": f"q{i} ", "target_scores": {"yes ": int(i % 2 == 0), "no": int(i % 2 == 1)}} for i in range(10)
    ] + [{"input": "tie", "target_scores": {"a": 1, "b": 1}}, {"input": "free text", "target": "x"}]}
    rows = build.bigbench_examples(task, None)
    assert len(rows) == 10  # the tie and the example without target_scores are dropped
    assert rows[0] == {"text": "Answer.\nQ: q0\nAnswer:", "choices": ["yes", "no"], "label": 0}
    assert rows[1]["label"] == 1
    subsample = build.bigbench_examples(task, 4)
    assert subsample == build.bigbench_examples(task, 4) and len(subsample) == 4
    positions = [rows.index(row) for row in subsample]
    assert positions == sorted(positions)  # kept in the task's own order


def test_cloze_target_is_the_last_sentence_final_word():
    build = _build_script()
    text = "One two three four five six ended. Then came the U.S. and the end. More words follow here"
    example = build.cloze_example("t", text, min_context_words=3, max_words=14)
    assert example == {"title": "t", "context": "One two three four five six ended. Then came the U.S. and the",
                       "target": "end"}
    assert build.cloze_example("t", "no sentence end here at all", 2, 10) is None


def test_build_is_deterministic_and_reproduces_the_shipped_wikipedia_tasks(tmp_path):
    build = _build_script()
    source = tmp_path / "bigbench-src"
    for name in build.BIGBENCH_TASKS:  # a tiny stand-in for the 358 MB BIG-bench sdist
        path = source / "bigbench" / "benchmark_tasks" / name / "task.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"examples": [{"input": "q", "target_scores": {"a": 1, "b": 0}}]}))
    first, second = tmp_path / "a", tmp_path / "b"
    build.build(first, source)
    build.build(second, source)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert all((first / n).read_bytes() == (second / n).read_bytes() for n in names)
    for name in ("mxbench_wiki_cloze.jsonl", "mxbench_wiki_ppl.jsonl", "mxbench_wiki_cloze.yaml",
                 "mxbench_wiki_ppl.yaml"):
        assert (first / name).read_bytes() == (tasks.TASK_DIR / name).read_bytes()
