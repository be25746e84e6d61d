"""``export_cell``: a trained cell of a run, written in another library's format with a model card.

What each format can hold:

- ``mxbench``: every method (our own checkpoint, ``methods.load_layer`` reads it back).
- ``sparsify``: ``tc``, ``stc`` and ``sae`` (TopK transcoders with or without skip, TopK SAEs).
- ``sae-lens``: ``tc`` and ``sae`` (SAELens has no TopK transcoder class, so a TC is written as a
  ``topk`` SAE with apply_b_dec_to_input=false, which is the same function, plus hook_name_out).

MxD's experts and the low-rank MoEs are not a dictionary of single directions that those
formats describe, so they export to ``mxbench`` only; asking for another format is refused.
"""
from __future__ import annotations

from pathlib import Path

from bench.interop import saelens, sparsify
from bench.interop.card import model_card
from bench.interop.files import InteropError, write_json
from bench.interop.loading import EXPORT_FILE
from bench.interop.sites import SpliceSite, site_for_model
from bench.results import RunStore
from methods.base import SparseLayer
from methods.checkpoint import load_layer, save_layer
from methods.sae import SparseAutoencoder
from methods.transcoder import SkipTranscoder, Transcoder

FORMATS = ("sae-lens", "sparsify", "mxbench")
_EXPRESSIBLE = {"sae-lens": (Transcoder, SparseAutoencoder),
                "sparsify": (Transcoder, SkipTranscoder, SparseAutoencoder)}


def find_row(run_dir: Path, cell: str) -> dict:
    """The finished row of ``cell`` (``METHOD-kK``, the name of its checkpoint folder) in a run."""
    rows = [r for r in RunStore(run_dir).rows() if r.get("status") == "ok" and r.get("checkpoint")]
    matching = [r for r in rows if f"{r.get('method')}-k{r.get('k')}" == cell]
    if not matching:
        cells = sorted({f"{r.get('method')}-k{r.get('k')}" for r in rows})
        raise InteropError(f"{run_dir}: no finished cell {cell!r}; cells with checkpoints: "
                           f"{', '.join(cells) or 'none'}")
    if len({r["checkpoint"] for r in matching}) > 1:
        raise InteropError(f"{run_dir}: {len(matching)} rows are cell {cell!r} with different checkpoints; export from "
                           "a run that holds one")
    return matching[-1]


def export_cell(run_dir: str | Path, cell: str, fmt: str, out_dir: str | Path, *,
                site: SpliceSite | None = None) -> Path:
    """Write cell ``cell`` of ``run_dir`` to ``out_dir`` in format ``fmt``; returns ``out_dir``.

    ``site`` defaults to one read from the row's model config (built on the meta device, no weights).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if fmt not in FORMATS:
        raise InteropError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InteropError(f"{out_dir}: exists and is not empty; export into a new folder")
    row = find_row(run_dir, cell)
    layer = load_layer(run_dir / row["checkpoint"])
    _check_expressible(layer, fmt, cell)
    site = site or site_for_model(row["model"], row["layer"])
    if site.layer != row["layer"] or site.spec.d_model != layer.spec.d_model:
        raise InteropError(f"site is layer {site.layer} with d_model {site.spec.d_model}, but cell {cell!r} is layer "
                           f"{row['layer']} with d_model {layer.spec.d_model}")
    hook_in = site.norm_name if layer.input_site == "mlp_input" else site.mlp_name
    subfolder = ""
    if fmt == "sae-lens":
        saelens.write(layer, site, out_dir, str(row.get("model_id") or row.get("model")))
    elif fmt == "sparsify":
        subfolder = sparsify.write(layer, site, out_dir).name
        hook_in = f"{site.hookpoint} ({'input' if layer.input_site == 'mlp_input' else 'output'})"
    else:
        save_layer(layer, out_dir)
        write_json({"model": row.get("model"), "model_id": row.get("model_id"), "layer": row["layer"],
                    "method": row["method"], "k": row["k"], "hook_in": hook_in, "hook_out": site.mlp_name,
                    "run": row.get("run")}, out_dir / EXPORT_FILE)
    (out_dir / "README.md").write_text(model_card(row, layer, fmt, hook_in, site.mlp_name, subfolder), encoding="utf-8")
    return out_dir


def _check_expressible(layer: SparseLayer, fmt: str, cell: str) -> None:
    if fmt == "mxbench" or type(layer) in _EXPRESSIBLE[fmt]:
        return
    if fmt == "sae-lens" and type(layer) is SkipTranscoder:
        raise InteropError(f"cell {cell!r}: SAELens has no TopK skip transcoder (its skip_transcoder is ReLU); "
                           "use --format sparsify or mxbench")
    raise InteropError(f"cell {cell!r}: {type(layer).__name__} is not a dictionary of single directions that {fmt} can "
                       "express (experts / low-rank factors); use --format mxbench")


def push_to_hub(out_dir: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
                api=None) -> str:
    """Upload an export folder to the model repo ``repo_id`` (created if needed); returns the commit URL."""
    out_dir = Path(out_dir)
    if not (out_dir / "README.md").is_file():
        raise InteropError(f"{out_dir}: not an export (no README.md); run bench export first")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(out_dir), repo_type="model",
                                 commit_message=f"mxbench export: {out_dir.name}")
    except Exception as err:  # auth, network, naming: the hub raises many classes; one line for the CLI
        raise InteropError(f"push to {repo_id} failed: {' '.join(str(err).split())[:300]}") from None
    return str(getattr(info, "commit_url", info))
