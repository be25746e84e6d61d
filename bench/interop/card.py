"""The model card (README.md) written beside every export: what it is, how it scored, how to load it."""
from __future__ import annotations

from typing import Any

from methods.base import SparseLayer

_METRICS = (
    ("nmse", "NMSE (held-out)"), ("l0", "L0 (active units per token)"), ("dead_fraction", "dead units (fraction)"),
    ("ce_clean", "CE, clean model"), ("ce_spliced", "CE, layer spliced in"), ("delta_ce", "ΔCE"),
    ("delta_ce_stderr", "ΔCE paired standard error"), ("ce_zero", "CE, MLP zero-ablated"),
    ("ce_recovered", "fraction of CE recovered"), ("n_params", "parameters"), ("n_units", "sparse units"),
)
_SETTINGS = ("run", "model", "model_id", "layer", "dataset", "expansion", "train_tokens", "trained_tokens",
             "eval_tokens", "ce_tokens", "context_length", "batch_size", "lr", "warmup_steps", "seed", "precision",
             "device", "timestamp")
_LIBRARY = {"sae-lens": "saelens", "sparsify": "sparsify", "mxbench": "mxbench"}


def model_card(row: dict[str, Any], layer: SparseLayer, fmt: str, hook_in: str, hook_out: str, subfolder: str) -> str:
    method, k, model, index = row["method"], row["k"], row.get("model_id") or row.get("model"), row["layer"]
    kind = "sae" if layer.input_site == "mlp_output" else "transcoder"
    lines = ["---", f"library_name: {_LIBRARY[fmt]}", "tags:", "- mxbench", f"- {kind}"]
    if isinstance(model, str) and model.count("/") == 1 and not model.startswith((".", "/", "~")):
        lines.append(f"base_model: {model}")
    lines += ["---", "", f"# {method} K={k} for {model}, layer {index}", "",
              f"{layer.description}. Trained and scored by mxbench (run `{row.get('run')}`), exported in the "
              f"**{fmt}** format. It reads `{hook_in}` and writes `{hook_out}` (the MLP's output) of layer "
              f"{index}.", "",
              "## Scores (from the run's own evaluation)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {label} | {_value(row.get(key))} |" for key, label in _METRICS if row.get(key) is not None]
    lines += ["", "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {key} | {_value(row.get(key))} |" for key in _SETTINGS if row.get(key) is not None]
    lines += [f"| method config | `{row.get('method_config') or layer.to_config()['config']}` |", "",
              "## Versions", "", "| package | version |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in sorted((row.get("versions") or {}).items())]
    lines += ["", "## Loading", "", "```python", *_loading(fmt, subfolder, index), "```", ""]
    return "\n".join(lines)


def _loading(fmt: str, subfolder: str, layer: int) -> list[str]:
    if fmt == "sae-lens":
        return ["from sae_lens import SAE", f"sae = SAE.load_from_disk('{subfolder or '.'}')  # a topk SAE; a TC "
                "writes hook_name_out", "# or score it in mxbench:",
                f"#   bench eval --load DIR --model MODEL --layer {layer}"]
    if fmt == "sparsify":
        return ["from sparsify import SparseCoder", f"coder = SparseCoder.load_from_disk('{subfolder}')",
                "# or score it in mxbench:", f"#   bench eval --load DIR --model MODEL --layer {layer}"]
    return ["from methods import load_layer", "layer = load_layer('.')  # forward(x) -> (y_hat, codes)",
            "# or score it in mxbench:", f"#   bench eval --load DIR --model MODEL --layer {layer}"]


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)
