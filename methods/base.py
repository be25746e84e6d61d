"""The interface every sparse layer implements, and the pieces they share.

A method replaces one MLP sublayer: it maps the MLP's input x (or, for methods whose
``input_site`` is ``"mlp_output"``, the MLP's output) to an estimate of the MLP's output.
The harness only ever talks to this interface, so it never branches on a method's name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SITES = ("mlp_input", "mlp_output")


@dataclass(frozen=True)
class LayerSpec:
    """The shape of the MLP sublayer being replaced, read off the base model."""

    d_model: int
    d_mlp: int  # hidden width of the base MLP (e.g. 4 d for GPT-2, 2048 for Gemma 3 270M)
    gated: bool = False  # the base MLP is a GLU (Llama, Gemma)
    activation: str = "gelu"  # transformers ACT2FN name of the base MLP's activation


@dataclass
class MethodConfig:
    """Settings common to every method; a method extends this with its own fields.

    ``expansion`` fixes the parameter budget: that of a TopK transcoder of width
    ``expansion * d_model``. Methods with ``match_params`` spend the same budget.
    """

    k: int = 32
    expansion: int = 32
    match_params: bool = True


class SparseCodes(NamedTuple):
    """The active units of each token: TopK values and their unit indices, both [tokens, K].

    A value of 0 marks a selected-but-inactive unit (ReLU clipped it); L0 counts non-zeros.
    """

    values: torch.Tensor
    indices: torch.Tensor


class SparseLayer(nn.Module):
    """Base class of all methods: ``forward(x) -> (y_hat, codes)``.

    Subclasses set ``Config`` (a ``MethodConfig`` dataclass), ``description``,
    ``n_units`` (how many sparse units exist, for dead-unit counting), and implement
    ``forward`` and ``expected_n_params``. ``project_gradients`` runs before each optimiser
    step and ``constrain`` after it, for methods with norm constraints.
    """

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    name: ClassVar[str] = ""  # set by methods.registry.register
    description: ClassVar[str] = ""
    input_site: ClassVar[str] = "mlp_input"

    def __init__(self, spec: LayerSpec, config: MethodConfig) -> None:
        super().__init__()
        if config.k < 1:
            raise ValueError(f"k must be >= 1, got {config.k}")
        self.spec = spec
        self.config = config
        self.n_units = 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, SparseCodes]:  # pragma: no cover
        raise NotImplementedError

    def forward_with_aux(self, x: torch.Tensor, dead: torch.Tensor,
                         k_aux: int) -> tuple[torch.Tensor, SparseCodes, torch.Tensor]:
        """``forward(x)`` plus the dead units' estimate for the AuxK term: (y_hat, codes, e_hat).

        ``dead`` is a [n_units] bool mask (units not selected for a while). e_hat is what the
        ``k_aux`` dead units with the largest pre-activations write (no bias); training fits it to
        the residual y - y_hat, so that the gradient reaches units the TopK never picks. A method
        whose units are TopK-selected overrides this (``supports_aux``); the default refuses.
        """
        raise NotImplementedError(f"method {self.name!r} has no AuxK term (forward_with_aux)")

    @classmethod
    def supports_aux(cls) -> bool:
        """Whether the class implements ``forward_with_aux``."""
        return cls.forward_with_aux is not SparseLayer.forward_with_aux

    def project_gradients(self) -> None:
        """Remove gradient components that would break a norm constraint (default: none)."""

    @torch.no_grad()
    def constrain(self) -> None:
        """Re-impose norm constraints after an optimiser step (default: none)."""

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def expected_n_params(cls, spec: LayerSpec, config: MethodConfig) -> int:  # pragma: no cover
        """The closed-form parameter count; tests compare it with ``n_params()``."""
        raise NotImplementedError

    def to_config(self) -> dict[str, Any]:
        """A JSON-serialisable description from which ``from_config`` rebuilds the module."""
        return {
            "method": self.name,
            "spec": dataclasses.asdict(self.spec),
            "config": dataclasses.asdict(self.config),
        }

    @classmethod
    def from_config(cls, blob: dict[str, Any]) -> "SparseLayer":
        spec = LayerSpec(**blob["spec"])
        return cls(spec, cls.Config(**blob["config"]))


def transcoder_budget(spec: LayerSpec, expansion: int) -> int:
    """Parameters of the reference TopK transcoder: P_tc = 2 d H_tc + H_tc + d, H_tc = expansion d."""
    width = expansion * spec.d_model
    return 2 * spec.d_model * width + width + spec.d_model


def topk_relu(pre_activations: torch.Tensor, k: int) -> SparseCodes:
    """TopK_k(ReLU(pre)); equal to ReLU(TopK_k(pre)), which avoids a dense ReLU pass."""
    values, indices = pre_activations.topk(k, dim=-1, sorted=False)
    return SparseCodes(F.relu(values), indices)


def dead_unit_codes(pre_activations: torch.Tensor, dead: torch.Tensor, k_aux: int) -> SparseCodes:
    """TopK_{k_aux}(ReLU(pre)) over the dead units only, their indices in the layer's numbering.

    Only the dead columns are gathered ([tokens, n_dead]), so the gradient reaches dead units alone;
    with fewer than ``k_aux`` dead units, all of them are used.
    """
    dead_index = dead.nonzero().squeeze(-1)
    codes = topk_relu(pre_activations.index_select(-1, dead_index), min(k_aux, len(dead_index)))
    return SparseCodes(codes.values, dead_index[codes.indices])


def sparse_decode(codes: SparseCodes, rows: torch.Tensor) -> torch.Tensor:
    """sum_k values[:, k] * rows[indices[:, k]]: an O(K d) decode that never builds the N-wide code.

    ``rows`` is [n_units, d]. embedding_bag gathers only the K selected rows, forward and backward.
    """
    lead = codes.indices.shape[:-1]
    k = codes.indices.shape[-1]
    out = F.embedding_bag(
        codes.indices.reshape(-1, k),
        rows,
        per_sample_weights=codes.values.reshape(-1, k).to(rows.dtype),
        mode="sum",
    )
    return out.reshape(*lead, rows.shape[-1])


def dense_codes(codes: SparseCodes, n_units: int) -> torch.Tensor:
    """The N-wide code vector (slow; for tests and reference formulations only)."""
    out = codes.values.new_zeros(*codes.values.shape[:-1], n_units)
    return out.scatter(-1, codes.indices, codes.values)


def normalise_rows_(weight: torch.Tensor, eps: float = 1e-8) -> None:
    """Scale each row of ``weight`` to unit L2 norm, in place."""
    weight.div_(weight.norm(dim=-1, keepdim=True).clamp_min(eps))


@torch.no_grad()  # else the projection records a graph into .grad, keeping weight's history alive
def remove_parallel_gradient_(weight: nn.Parameter, min_norm: float = 0.0) -> None:
    """Project out the gradient component parallel to each row of ``weight``:
    g <- g - (g . w / ||w||^2) w, for rows with ||w|| >= ``min_norm`` (others are left free).

    With rows kept at unit norm, that component only changes the norm, which the
    renormalisation undoes; removing it keeps Adam's moments meaningful (SAE practice).
    Costs three passes over the [rows, d] weight and no [rows, d] temporaries (one norm, one
    batched dot product, one in-place addcmul): it runs every step on every row.
    """
    grad = weight.grad
    if grad is None:
        return
    norms = torch.linalg.vector_norm(weight, dim=-1, keepdim=True)
    dots = torch.einsum("...d,...d->...", grad, weight).unsqueeze(-1)  # batched dots, no product tensor
    coefficients = dots / norms.square().clamp_min(1e-16)
    if min_norm > 0:
        coefficients = torch.where(norms >= min_norm, coefficients, 0.0)
    grad.addcmul_(weight, coefficients, value=-1.0)
