"""Where a dictionary comes from: a local path or a Hugging Face Hub reference, and its format.

Hub references (downloaded with ``huggingface_hub.snapshot_download``, JSON and safetensors only,
into the usual hub cache; then read exactly like a local directory):

    hf://ORG/REPO                 the whole repository
    hf://ORG/REPO/SUB/PATH        one folder of it (a SAELens SAE id, a sparsify hookpoint)
    hf://ORG/REPO@REVISION/SUB    at a branch, tag or commit
    ORG/REPO:SUB/PATH             the same, shorter (ORG/REPO@REV:SUB too); an existing local path wins

Formats, told apart by their files: ``mxbench`` (config.json + weights.safetensors, ours),
``sae-lens`` (cfg.json + sae_weights.safetensors), ``sparsify`` (cfg.json + sae.safetensors, or
a directory of such hookpoint folders).
"""
from __future__ import annotations

import re
from pathlib import Path

from bench.interop import saelens, sparsify
from bench.interop.files import PICKLE_SUFFIXES, InteropError, refuse_pickle
from methods.checkpoint import CONFIG_FILE as MXBENCH_CONFIG
from methods.checkpoint import WEIGHTS_FILE as MXBENCH_WEIGHTS

FORMATS = ("mxbench", "sae-lens", "sparsify")
_HF_URL = re.compile(r"^hf://(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<rev>[\w./-]+?))?(?:/(?P<sub>.*))?$")
_HF_SHORT = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<rev>[\w.-]+))?:(?P<sub>.*)$")


def parse_hub_reference(source: str) -> tuple[str, str | None, str] | None:
    """(repo_id, revision, sub-path) of a hub reference, or None for a local path."""
    match = _HF_URL.match(source)
    if match is None and not Path(source).expanduser().exists():
        match = _HF_SHORT.match(source)
    if match is None:
        return None
    return match["repo"], match["rev"], (match["sub"] or "").strip("/")


def download(repo_id: str, revision: str | None, sub: str) -> Path:
    """Fetch only the JSON and safetensors files under ``sub`` (pickles are never downloaded)."""
    from huggingface_hub import snapshot_download

    prefix = f"{sub}/" if sub else ""
    try:
        root = snapshot_download(repo_id, revision=revision,
                                 allow_patterns=[f"{prefix}*.json", f"{prefix}*.safetensors", f"{prefix}*.md"])
    except Exception as err:  # hub errors have many classes; the user needs the one line
        raise InteropError(f"hf://{repo_id}{'@' + revision if revision else ''}/{sub}: download failed: "
                           f"{' '.join(str(err).split())[:300]}") from None
    return Path(root) / sub


def resolve(source: str) -> Path:
    """A local directory holding the dictionary named by ``source``."""
    hub = parse_hub_reference(source)
    path = download(*hub) if hub else Path(source).expanduser()
    if path.is_file():
        refuse_pickle(path)
        path = path.parent  # cfg.json or a weights file: its folder is the dictionary
    if not path.is_dir():
        raise InteropError(f"{source}: no such directory (give a local folder, hf://ORG/REPO/PATH or ORG/REPO:PATH)")
    return path


def detect_format(directory: Path) -> str:
    """Which of FORMATS ``directory`` holds, by its files; a folder of pickles is refused by name."""
    files = {p.name for p in directory.iterdir()} if directory.is_dir() else set()
    if MXBENCH_CONFIG in files and MXBENCH_WEIGHTS in files:
        return "mxbench"
    if saelens.CONFIG_FILE in files:
        if saelens.WEIGHTS_FILE in files:
            return "sae-lens"
        if sparsify.WEIGHTS_FILE in files:
            return "sparsify"
    if any((p / sparsify.CONFIG_FILE).is_file() for p in directory.iterdir() if p.is_dir()):
        return "sparsify"  # a folder of hookpoints
    pickles = sorted(name for name in files if Path(name).suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise InteropError(f"{directory}: holds only pickle weights {pickles}; refusing them (safetensors + JSON only)")
    if saelens.CONFIG_FILE in files or MXBENCH_CONFIG in files:
        raise InteropError(f"{directory}: has a config but no weights: expected {saelens.WEIGHTS_FILE} (SAELens), "
                           f"{sparsify.WEIGHTS_FILE} (sparsify) or {MXBENCH_WEIGHTS} (mxbench)")
    raise InteropError(f"{directory}: not a dictionary: expected cfg.json + sae_weights.safetensors (SAELens), "
                       f"cfg.json + sae.safetensors (sparsify) or {MXBENCH_CONFIG} + {MXBENCH_WEIGHTS} (mxbench); "
                       f"found {sorted(files) or 'nothing'}")
