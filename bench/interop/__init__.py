"""Dictionaries from other libraries, scored on our splice; our cells, written in their formats.

    site = splice_site(model, layer)                 # what the splice reads and writes at that layer
    loaded = load_dictionary("hf://org/repo/sub", site)   # SAELens, sparsify or mxbench checkpoint
    loaded.layer                                      # a methods.base.SparseLayer, ready to splice
    export_cell("results/run", "tc-k32", "sparsify", "out/")   # and push_to_hub("out/", "org/name")

See docs/INTEROP.md for the formats, architectures, sites and normalisations handled.
"""
from bench.interop.export import FORMATS, export_cell, push_to_hub
from bench.interop.files import InteropError
from bench.interop.loading import Loaded, load_dictionary
from bench.interop.sites import SpliceSite, site_for_model, splice_site

__all__ = ["FORMATS", "InteropError", "Loaded", "SpliceSite", "export_cell", "load_dictionary", "push_to_hub",
           "site_for_model", "splice_site"]
