"""``python -m methods``: parameter count of every registered method at one layer shape.

Layers are built on the meta device, so even paper-sized tables cost no memory; the count
is checked against each method's closed form. Defaults: Gemma 3 270M's MLP.
"""
from __future__ import annotations

import argparse

import torch

from methods import LayerSpec, create, load_entry_points, load_plugin, method_names
from methods.base import transcoder_budget


def parameter_table(spec: LayerSpec, expansion: int, k: int) -> list[tuple[str, int, int, float]]:
    """(name, n_units, n_params, deviation from the TC budget in %) for every registered method."""
    budget = transcoder_budget(spec, expansion)
    rows = []
    for name in method_names():
        with torch.device("meta"):
            layer = create(name, spec, k=k, expansion=expansion)
        n_params = layer.n_params()
        if n_params != type(layer).expected_n_params(spec, layer.config):
            raise AssertionError(f"{name}: expected_n_params disagrees with the module ({n_params:,})")
        rows.append((name, layer.n_units, n_params, 100 * (n_params - budget) / budget))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m methods", description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=640)
    parser.add_argument("--d-mlp", type=int, default=2048)
    parser.add_argument("--activation", default="gelu_pytorch_tanh")
    parser.add_argument("--not-gated", dest="gated", action="store_false")
    parser.add_argument("--expansion", type=int, nargs="+", default=[32, 8])
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--plugin", action="append", default=[], help="a file that registers more methods")
    args = parser.parse_args(argv)
    for path in args.plugin:
        load_plugin(path)
    load_entry_points()
    spec = LayerSpec(args.d_model, args.d_mlp, args.gated, args.activation)
    for expansion in args.expansion:
        print(f"\n{spec}, expansion {expansion}, k {args.k}: TC budget {transcoder_budget(spec, expansion):,}")
        print(f"| {'method':<16} | {'n_units':>7} | {'n_params':>11} | {'vs budget':>9} |")
        print(f"|{'-' * 18}|{'-' * 8}:|{'-' * 12}:|{'-' * 10}:|")
        for name, n_units, n_params, deviation in parameter_table(spec, expansion, args.k):
            print(f"| {name:<16} | {n_units:>7,} | {n_params:>11,} | {deviation:>+8.3f}% |")


if __name__ == "__main__":
    main()
