import pytest
import torch

from bench.evaluate import CrossEntropyEvaluator, next_token_losses
from bench.models import layer_spec, mlp_module
from bench.splice import SplicedMLP, ZeroMLP, replaced_mlp, spliced, zero_ablated
from methods.base import SparseCodes, SparseLayer


class PassThrough(SparseLayer):
    """Returns its input: spliced at the MLP output site, the LM must be unchanged."""

    input_site = "mlp_output"

    def __init__(self, spec):
        from methods.base import MethodConfig

        super().__init__(spec, MethodConfig(k=1))
        self.n_units = 1
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        idx = torch.zeros(*x.shape[:-1], 1, dtype=torch.long)
        return x * self.scale, SparseCodes(torch.ones_like(idx, dtype=x.dtype), idx)


def _logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


def test_pass_through_splice_leaves_the_model_unchanged(any_arch_model):
    _, model = any_arch_model
    ids = torch.randint(0, 96, (2, 12))
    clean = _logits(model, ids)
    with spliced(model, 1, PassThrough(layer_spec(model, 1))):
        assert isinstance(mlp_module(model, 1), SplicedMLP)
        torch.testing.assert_close(_logits(model, ids), clean)
    with zero_ablated(model, 1):
        assert not torch.allclose(_logits(model, ids), clean)
    torch.testing.assert_close(_logits(model, ids), clean)


def test_the_original_mlp_comes_back_after_an_error():
    from tests.conftest import tiny_model

    model = tiny_model("llama")
    original = mlp_module(model, 2)
    with pytest.raises(RuntimeError):
        with replaced_mlp(model, 2, ZeroMLP()):
            raise RuntimeError("boom")
    assert mlp_module(model, 2) is original


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_replayed_prefix_gives_the_full_forward_ce(any_arch_model, layer):
    """The cached-prefix evaluation must equal a plain full forward, clean and ablated."""
    _, model = any_arch_model
    contexts = torch.randint(0, 96, (5, 16))
    evaluator = CrossEntropyEvaluator(model, layer, contexts, batch_size=2)
    for replacement in (None, ZeroMLP()):
        with replaced_mlp(model, layer, replacement):
            full = next_token_losses(_logits(model, contexts), contexts).mean(dim=1).double()
        torch.testing.assert_close(evaluator.per_sequence_ce(replacement), full)


def test_next_token_losses_match_cross_entropy():
    logits, ids = torch.randn(2, 7, 50), torch.randint(0, 50, (2, 7))
    reference = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 50), ids[:, 1:].reshape(-1), reduction="none")
    torch.testing.assert_close(next_token_losses(logits, ids), reference.view(2, 6))


class Doubler(PassThrough):
    """Returns twice its input, read at the MLP's input: spliced in, the block adds 2 x its MLP input."""

    input_site = "mlp_input"

    def forward(self, x):
        out, codes = super().forward(x)
        return 2 * out, codes


def tiny_neox(parallel: bool):
    """The fixture's tiny GPT-NeoX with the residual form chosen: Pythia's parallel residual
    (x + attn(ln1 x) + mlp(ln2 x)) or the serial one (h = x + attn(ln1 x); h + mlp(ln2 h))."""
    import transformers as tf

    torch.manual_seed(0)
    config = tf.GPTNeoXConfig(num_hidden_layers=4, hidden_size=32, num_attention_heads=4, intermediate_size=128,
                              vocab_size=96, max_position_embeddings=128, use_parallel_residual=parallel)
    return tf.GPTNeoXForCausalLM(config).eval().requires_grad_(False)


def _block_parts(model, layer: int, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Block ``layer``'s input, its attention's output and its output, from transformers' own modules."""
    block, seen = model.gpt_neox.layers[layer], {}
    handles = [block.register_forward_pre_hook(lambda m, args, kwargs: seen.update(input=args[0]), with_kwargs=True),
               block.attention.register_forward_hook(lambda m, args, out: seen.update(attention=out[0])),
               block.register_forward_hook(lambda m, args, out: seen.update(output=out[0] if isinstance(out, tuple) else out))]
    try:
        seen["logits"] = model(input_ids=ids, use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("parallel", [True, False], ids=["parallel-residual", "serial-residual"])
def test_neox_mlp_site_and_splice_follow_its_residual_form(parallel):
    """The residual stream worked out by hand: the MLP reads LayerNorm of the block's input (parallel)
    or of the input plus the attention's output (serial), and the block's output is input + attention +
    whatever stands in the MLP's place; an identity-equivalent splice leaves the logits bit-exact."""
    from bench.activations import collect_mlp_io

    model, layer = tiny_neox(parallel), 2
    block = model.gpt_neox.layers[layer]
    assert mlp_module(model, layer) is block.mlp and block.use_parallel_residual == parallel
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    clean = _block_parts(model, layer, ids)
    norm = block.post_attention_layernorm
    read = clean["input"] if parallel else clean["input"] + clean["attention"]
    mlp_input = torch.nn.functional.layer_norm(read, (32,), norm.weight, norm.bias, norm.eps)
    x, y = collect_mlp_io(model, layer, ids)
    torch.testing.assert_close(x, mlp_input.reshape(-1, 32))
    torch.testing.assert_close(clean["output"], clean["input"] + clean["attention"] + y.view(2, 12, 32))

    spec = layer_spec(model, layer)
    with spliced(model, layer, PassThrough(spec)):  # fed the real MLP's output, returns it unchanged
        assert torch.equal(model(input_ids=ids, use_cache=False).logits, clean["logits"])
    with spliced(model, layer, Doubler(spec)):
        doubled = _block_parts(model, layer, ids)
    torch.testing.assert_close(doubled["output"], clean["input"] + clean["attention"] + 2 * mlp_input)
    with zero_ablated(model, layer):
        zero = _block_parts(model, layer, ids)
    torch.testing.assert_close(zero["output"], clean["input"] + clean["attention"])
    assert not torch.allclose(zero["logits"], clean["logits"])
    assert torch.equal(model(input_ids=ids, use_cache=False).logits, clean["logits"])  # the splice is undone


def _fitted(method: str, model, layer: int, ids: torch.Tensor) -> SparseLayer:
    """A small ``method`` layer given 30 Adam steps on this model's own MLP activations: weights that
    are neither the initial ones nor a good fit, as a trained cell's are."""
    import methods
    from bench.activations import collect_mlp_io

    torch.manual_seed(0)
    sparse = methods.create(method, layer_spec(model, layer), expansion=2, k=4)
    x, y = collect_mlp_io(model, layer, ids)
    source = y if sparse.input_site == "mlp_output" else x
    optimiser = torch.optim.Adam(sparse.parameters(), lr=1e-2)
    with torch.enable_grad():
        for _ in range(30):
            optimiser.zero_grad()
            (sparse(source)[0] - y).pow(2).mean().backward()
            optimiser.step()
    return sparse.eval().requires_grad_(False)


@pytest.mark.parametrize("method", ["tc", "sae"])
def test_a_fitted_layer_scores_through_the_replayed_prefix_as_in_a_full_forward(any_arch_model, method):
    """The evaluator's CE and KL of a spliced layer (blocks below L replayed from its cache) equal those of
    a plain forward of the whole model with the layer spliced in, scored here with F.cross_entropy and
    F.kl_div: per context, the mean over its T - 1 predictions."""
    import torch.nn.functional as F

    _, model = any_arch_model
    layer, contexts = 2, torch.randint(0, 96, (5, 16), generator=torch.Generator().manual_seed(1))
    sparse = _fitted(method, model, layer, contexts)
    evaluator = CrossEntropyEvaluator(model, layer, contexts, batch_size=2)  # batches of 2, 2 and 1
    evaluator.capture_clean()
    scores = evaluator.score(SplicedMLP(sparse, mlp_module(model, layer)))

    clean_logits = _logits(model, contexts)[:, :-1]
    with spliced(model, layer, sparse):
        logits = _logits(model, contexts)[:, :-1]
    targets = contexts[:, 1:]
    ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(dim=1)
    # in float64 from the fp32 logits: the exact KL of what the model computed
    kl = F.kl_div(F.log_softmax(logits.double(), -1), F.log_softmax(clean_logits.double(), -1), log_target=True,
                  reduction="none").sum(-1).mean(dim=1)
    clean_ce = F.cross_entropy(clean_logits.transpose(1, 2), targets, reduction="none").mean(dim=1)
    assert (ce - clean_ce).abs().max() > 1e-4  # the layer changes the model: a wrong splice can show
    torch.testing.assert_close(scores["ce"], ce.double(), rtol=1e-5, atol=1e-6)
    # atol: fp32 rounding of the logits (about 1e-7 nats here) where the KL itself is about 1e-4
    torch.testing.assert_close(scores["kl"], kl.double(), rtol=1e-4, atol=3e-7)
