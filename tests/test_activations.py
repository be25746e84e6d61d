import torch

from bench.activations import collect_all, collect_mlp_io, lm_chunks, shuffled_batches
from bench.models import decoder_layers, mlp_module
from tests.conftest import tiny_model


def test_collects_the_mlp_input_and_output_and_stops_there(any_arch_model):
    _, model = any_arch_model
    ids = torch.randint(0, 96, (3, 10))
    seen = {}
    def remember(module, args, output):
        seen["io"] = (args[0], output)

    mlp_module(model, 1).register_forward_hook(remember)
    calls = []
    decoder_layers(model)[2].register_forward_hook(lambda *a: calls.append(1))
    x, y = collect_mlp_io(model, 1, ids)
    assert x.shape == y.shape == (30, 32)
    torch.testing.assert_close(x, seen["io"][0].reshape(30, 32))
    torch.testing.assert_close(y, mlp_module(model, 1)(x))
    assert not calls, "the forward must stop after layer 1's MLP"


def test_shuffled_batches_serve_exactly_the_requested_tokens_as_a_permutation():
    model = tiny_model("llama")
    # distinct first tokens make every (context, position) input distinct
    contexts = [torch.cat([torch.tensor([i]), torch.randint(0, 96, (7,))]) for i in range(20)]
    x_all, _ = collect_all(model, 1, torch.stack(contexts), lm_batch_size=4)
    batches = list(shuffled_batches(lm_chunks(model, 1, iter(contexts), 4), n_tokens=150, batch_size=32,
                                    buffer_tokens=64, seed=0))
    xs = torch.cat([b[0] for b in batches])
    assert len(xs) == 150 and all(len(b[0]) <= 32 for b in batches)
    # every served row is one of the collected rows, none twice
    matches = (xs[:, None, :] == x_all[None]).all(-1)
    assert (matches.sum(1) >= 1).all()
    assert len({int(i) for i in matches.float().argmax(1)}) == 150
    # shuffled across contexts: the first batch is not the first 32 tokens in order
    assert not torch.equal(xs[:32], x_all[:32])


def test_shuffled_batches_are_reproducible_per_seed():
    model = tiny_model("gpt2")
    contexts = [torch.randint(0, 96, (8,)) for _ in range(10)]
    def run(seed):
        return torch.cat([b[0] for b in shuffled_batches(lm_chunks(model, 2, iter(contexts), 2), 64, 16, 32, seed)])
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
