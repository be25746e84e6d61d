"""TopK sparse autoencoder on the MLP output (the feature-quality baseline, not a replacement).

    z     = TopK_K(ReLU(W_enc (y - b_dec) + b_enc))     in R^H,  H = expansion * d
    y_hat = W_dec z + b_dec

It reads the MLP's OUTPUT y (``input_site = "mlp_output"``) and reconstructs it, so when
spliced the model computes SAE(MLP(x)). Decoder rows are unit-norm as in the TC. It has
exactly the TC's parameters (2 d H + H + d) at the same width, so it is matched by
construction. b_dec is stored as ``b_out`` to share the TC's decode path. Its AuxK term is the TC's
(``forward_with_aux``); since every pre-activation reads y - b_dec, b_dec receives AuxK gradient too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.base import LayerSpec
from methods.registry import register
from methods.transcoder import Transcoder, TranscoderConfig


@register("sae")
class SparseAutoencoder(Transcoder):
    description = "TopK SAE on the MLP output: y -> W_dec TopK(ReLU(W_enc (y - b_dec) + b)) + b_dec"
    input_site = "mlp_output"

    def __init__(self, spec: LayerSpec, config: TranscoderConfig) -> None:
        super().__init__(spec, config)
        with torch.no_grad():
            # Tied init (W_enc = W_dec^T; both hold latent i in row i), standard for TopK
            # SAEs: each latent starts by reading the direction it writes, keeping it alive.
            self.encoder.weight.copy_(self.decoder)

    def pre_activations(self, y: torch.Tensor) -> torch.Tensor:
        # W_enc (y - b_dec) + b_enc, with W_enc b_dec computed once per batch rather than per token:
        # the per-token product then reads only data, so backward skips its [tokens, d] input
        # gradient (a third of the encoder's backward); b_dec's gradient comes through the one vector.
        shift = F.linear(self.b_out, self.encoder.weight)
        return self.encoder(y) - shift
