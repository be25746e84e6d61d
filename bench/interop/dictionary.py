"""One normal form for a dictionary read from any format, its exact rewrites, and its SparseLayer.

    pre   = W_enc (x - s) + b_enc        s = b_dec if ``centre_input`` (SAE practice), else 0
    z     = TopK_K(ReLU(pre)) | JumpReLU_theta(pre) | ReLU(pre)
    y_hat = W_dec z + b_dec (+ W_skip x)

Each ``fold_*`` rewrites the weights so that the dictionary computes, on the activations our
splice hands it, exactly the function it computed on the activations it was trained on (up to
float rounding): a normalisation is folded into the weights rather than applied at run time.
TopK dictionaries become our own ``tc`` / ``stc`` / ``sae`` layers, JumpReLU and ReLU ones the
unregistered classes of ``methods.external``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.interop.files import InteropError
from bench.interop.sites import MLP_INPUT, MLP_OUTPUT
from methods import create
from methods.base import LayerSpec, SparseLayer
from methods.external import ThresholdAutoencoder, ThresholdConfig, ThresholdTranscoder

ACTIVATIONS = ("topk", "jumprelu", "relu")


@dataclass
class Dictionary:
    encoder: torch.Tensor  # [N, d]: row i is unit i's input direction
    b_enc: torch.Tensor  # [N]
    decoder: torch.Tensor  # [N, d]: row i is unit i's output direction
    b_dec: torch.Tensor  # [d]
    reads: str  # MLP_INPUT (transcoder) or MLP_OUTPUT (SAE)
    activation: str  # one of ACTIVATIONS
    centre_input: bool = False
    k: int | None = None
    threshold: torch.Tensor | None = None  # [N], JumpReLU only
    skip: torch.Tensor | None = None  # [d, d], y += skip @ x
    conversions: list[str] = field(default_factory=list)  # what was folded, for the provenance

    @property
    def width(self) -> int:
        return self.encoder.shape[0]

    def fold_input_scale(self, scale: float) -> None:
        """Trained on s x and writing s y (SAELens's dataset-norm scaling, SAE only): take x, write y.
        pre = W (s x - b_dec) + b = (s W)(x - b_dec / s) + b, and y = (W_dec z + b_dec) / s."""
        if not scale > 0:
            raise InteropError(f"norm scaling factor must be > 0, got {scale}")
        self.encoder = self.encoder * scale
        self.decoder, self.b_dec = self.decoder / scale, self.b_dec / scale
        self.conversions.append(f"dataset-norm scaling factor {scale:g} folded into W_enc, W_dec, b_dec")

    def fold_unit_scale(self, scale: torch.Tensor, why: str) -> None:
        """Units whose decoder row is used scaled: W_dec <- diag(scale) W_dec (the codes keep their values)."""
        self.decoder = self.decoder * scale[:, None]
        self.conversions.append(why)

    def fold_decoder_norm(self) -> None:
        """TopK chosen on pre * ||W_dec_i|| and decoded with unit rows: scale the encoder up, the decoder down."""
        norms = self.decoder.norm(dim=1)
        if bool((norms == 0).any()):
            raise InteropError("rescale_acts_by_decoder_norm with a zero decoder row: the dictionary divides by zero")
        self.encoder, self.b_enc = self.encoder * norms[:, None], self.b_enc * norms
        if self.threshold is not None:
            self.threshold = self.threshold * norms
        self.decoder = self.decoder / norms[:, None]
        self.conversions.append("rescale_acts_by_decoder_norm folded into W_enc, b_enc and W_dec")

    def fold_input_norm(self, gain: torch.Tensor | None, bias: torch.Tensor | None) -> None:
        """Trained on the norm's output before its gain and bias, x_n = (x - b) / g; take x itself:
        W_enc x_n = (W_enc / g) x - (W_enc / g) b."""
        if gain is None or bias is None:
            raise InteropError("reads blocks.L.ln2.hook_normalized (the norm before its gain), and this model's norm "
                               "gain could not be read to convert it; load with the model's weights")
        if bool((gain == 0).any()):
            raise InteropError("reads blocks.L.ln2.hook_normalized and the model's norm has a zero gain: "
                               "not invertible")
        self._fold_centre()
        self.encoder = self.encoder / gain
        self.b_enc = self.b_enc - self.encoder @ bias
        self.conversions.append("TransformerLens ln2.hook_normalized input converted to the MLP input: "
                                "W_enc / g, b_enc - (W_enc / g) b")

    def _fold_centre(self) -> None:
        """W (x - b_dec) + b_enc = W x + (b_enc - W b_dec): turn the centring into a bias."""
        if self.centre_input:
            self.b_enc = self.b_enc - self.encoder @ self.b_dec
            self.centre_input = False

    def to_layer(self, spec: LayerSpec) -> SparseLayer:
        """Build the SparseLayer that computes this dictionary (weights copied, nothing re-initialised)."""
        with torch.no_grad():
            layer = self._topk_layer(spec) if self.activation == "topk" else self._threshold_layer(spec)
        return layer.eval().requires_grad_(False)

    def _topk_layer(self, spec: LayerSpec) -> SparseLayer:
        if self.k is None or not 1 <= self.k <= self.width:
            raise InteropError(f"TopK k={self.k} must be between 1 and the width {self.width}")
        if self.reads == MLP_OUTPUT:
            if self.skip is not None:
                raise InteropError("an SAE with a skip connection has no counterpart here")
            if not self.centre_input:  # our SAE always centres: W y + b = W (y - b_dec) + (b + W b_dec)
                self.b_enc = self.b_enc + self.encoder @ self.b_dec
            layer = create("sae", spec, k=self.k, width=self.width, match_params=False)
        else:
            self._fold_centre()
            layer = create("tc" if self.skip is None else "stc", spec, k=self.k, width=self.width, match_params=False)
            if self.skip is not None:
                layer.skip.weight.copy_(self.skip)
        layer.encoder.weight.copy_(self.encoder)
        layer.encoder.bias.copy_(self.b_enc)
        layer.decoder.copy_(self.decoder)
        layer.b_out.copy_(self.b_dec)
        return layer

    def _threshold_layer(self, spec: LayerSpec) -> SparseLayer:
        if self.activation not in ACTIVATIONS:
            raise InteropError(f"activation {self.activation!r} is not one of {ACTIVATIONS}")
        cls = ThresholdAutoencoder if self.reads == MLP_OUTPUT else ThresholdTranscoder
        config = ThresholdConfig(width=self.width, jump=self.activation == "jumprelu", skip=self.skip is not None)
        layer = cls(spec, config)
        layer.name = f"external-{self.activation}-{'sae' if self.reads == MLP_OUTPUT else 'transcoder'}"
        layer.encoder.weight.copy_(self.encoder)
        layer.encoder.bias.copy_(self.b_enc)
        layer.decoder.copy_(self.decoder)
        layer.b_out.copy_(self.b_dec)
        if self.centre_input:
            layer.input_shift.copy_(self.b_dec)
        if layer.threshold is not None:
            layer.threshold.copy_(self.threshold)
        if layer.skip is not None:
            layer.skip.weight.copy_(self.skip)
        return layer


def check_reads(reads: str) -> str:
    if reads not in (MLP_INPUT, MLP_OUTPUT):
        raise InteropError(f"a dictionary must read {MLP_INPUT} or {MLP_OUTPUT}, not {reads}")
    return reads
