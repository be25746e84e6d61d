"""Sparse replacements for MLP sublayers, behind one interface (see ``methods/README.md``).

Importing this package registers the built-in methods. Use ``create(name, spec, k=...)``,
``method_names()`` and ``register`` to add your own; ``save_layer`` / ``load_layer`` for checkpoints.
"""
from methods import external, lowrank_moe, mxd, sae, transcoder  # noqa: F401  (registration side effects)
from methods.base import LayerSpec, MethodConfig, SparseCodes, SparseLayer
from methods.checkpoint import load_layer, save_layer
from methods.registry import (
    build_from_config,
    create,
    expand_method_names,
    get_method,
    load_entry_points,
    load_plugin,
    method_names,
    register,
)

__all__ = [
    "LayerSpec",
    "MethodConfig",
    "SparseCodes",
    "SparseLayer",
    "build_from_config",
    "create",
    "expand_method_names",
    "get_method",
    "load_entry_points",
    "load_layer",
    "load_plugin",
    "method_names",
    "register",
    "save_layer",
]
