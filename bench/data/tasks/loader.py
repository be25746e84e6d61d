"""Loads a shipped task's JSONL relative to this file, so the tasks work from any directory.

lm-eval passes ``dataset_kwargs`` to ``datasets.load_dataset``, which resolves a relative
``data_files`` against the current working directory, not the YAML's; ``custom_dataset:
!function loader.load_jsonl`` is resolved next to the YAML instead. Building the Dataset in
memory also skips the ``datasets`` cache, so nothing is written and nothing asks the hub.
"""
from __future__ import annotations

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load_jsonl(data_file: str, split: str = "test", **_metadata) -> datasets.DatasetDict:
    """``{split: Dataset}`` from ``data_file`` (relative to this directory); extra task metadata is ignored."""
    lines = (HERE / data_file).read_text(encoding="utf-8").splitlines()
    return datasets.DatasetDict({split: datasets.Dataset.from_list([json.loads(line) for line in lines if line])})
