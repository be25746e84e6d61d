import math
import time

import pytest
import torch
from torch import nn

from bench.models import (
    MODEL_ALIASES,
    ModelError,
    check_cache_writable,
    check_model_available,
    check_layer,
    check_layer_in_config,
    decoder_layers,
    default_layer,
    layer_spec,
    load_model,
    mlp_module,
    resolve_model_name,
)
from tests.conftest import tiny_model

EXPECTED_MLP = {"gpt2": "GPT2MLP", "gpt_neox": "GPTNeoXMLP", "llama": "LlamaMLP", "gemma3": "Gemma3MLP", "gemma": "GemmaMLP", "gemma2": "Gemma2MLP"}


def test_locates_the_mlp_of_every_architecture(any_arch_model):
    arch, model = any_arch_model
    assert len(decoder_layers(model)) == 4
    assert type(mlp_module(model, 2)).__name__ == EXPECTED_MLP[arch]
    assert mlp_module(model, 2) is not mlp_module(model, 1)


def test_layer_spec_reads_widths_and_gating(any_arch_model):
    arch, model = any_arch_model
    spec = layer_spec(model, 0)
    assert spec.d_model == 32
    assert spec.d_mlp == (128 if arch in ("gpt2", "gpt_neox") else 96)
    assert spec.gated == (arch in ("llama", "gemma", "gemma2", "gemma3"))
    x = torch.randn(3, 32)
    assert mlp_module(model, 0)(x).shape == (3, spec.d_model)


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


# The activations by their formulas: GELU exact (erf) and its tanh approximation differ by up to ~5e-4
# at the pre-activations below, far above float32 rounding, so a wrong name between them shows.
ACTIVATIONS = {"gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))), "gelu_new": _gelu_tanh,
               "gelu_pytorch_tanh": _gelu_tanh, "silu": lambda x: x * torch.sigmoid(x)}


def test_the_spec_rebuilds_the_mlp_by_hand(any_arch_model):
    """The activation layer_spec names, with the MLP's own weights, computes what the MLP computes:
    down(act(gate x) * up x) when gated, else out(act(in x + b)) + b, written out here."""
    arch, model = any_arch_model
    spec, mlp = layer_spec(model, 1), mlp_module(model, 1)
    act = ACTIVATIONS[spec.activation]
    x = 30 * torch.randn(64, spec.d_model, generator=torch.Generator().manual_seed(0))
    if spec.gated:
        hidden = act(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)
        expected = hidden @ mlp.down_proj.weight.T
    elif arch == "gpt2":  # Conv1D weights are [in, out]
        hidden = act(x @ mlp.c_fc.weight + mlp.c_fc.bias)
        expected = hidden @ mlp.c_proj.weight + mlp.c_proj.bias
    else:
        hidden = act(x @ mlp.dense_h_to_4h.weight.T + mlp.dense_h_to_4h.bias)
        expected = hidden @ mlp.dense_4h_to_h.weight.T + mlp.dense_4h_to_h.bias
    assert hidden.shape == (64, spec.d_mlp)
    assert hidden.abs().max() > 1  # pre-activations where the GELU variants part
    torch.testing.assert_close(mlp(x), expected, rtol=1e-5, atol=1e-6)


def test_default_layer_is_the_middle_and_out_of_range_is_an_error():
    model = tiny_model("llama", n_layers=6)
    assert default_layer(model) == 3
    assert check_layer(model, 5) == 5
    with pytest.raises(ModelError, match="layer 6 is out of range.*0..5"):
        check_layer(model, 6)
    with pytest.raises(ModelError, match="layer -1"):
        mlp_module(model, -1)


def test_unsupported_architecture_is_named():
    class Strange(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(ModelError, match="unsupported architecture Strange"):
        decoder_layers(Strange())


def test_aliases():
    assert resolve_model_name("gemma-2b") == "google/gemma-2b"
    assert resolve_model_name("gpt2") == "openai-community/gpt2"
    assert resolve_model_name("EleutherAI/pythia-70m") == "EleutherAI/pythia-70m"
    for alias in ("gpt2", "pythia-410m", "pythia-1.4b", "llama-3.2-3b", "gemma-2b", "gemma-3-270m"):
        assert alias in MODEL_ALIASES


def test_loads_a_local_directory(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    assert loaded.model_id == str(tiny_model_dir)
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert not loaded.model.training
    assert loaded.tokenizer.bos_token == "<bos>"


NO_SUCH_MODEL = "no/such-model-anywhere"


def test_a_hub_model_that_cannot_be_reached_fails_fast_in_one_line(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once, when huggingface_hub is imported
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty local hub cache
    for attempt in (lambda: load_model(NO_SUCH_MODEL), lambda: check_layer_in_config(NO_SUCH_MODEL, 0),
                    lambda: check_model_available(NO_SUCH_MODEL)):
        started = time.monotonic()
        with pytest.raises(ModelError) as caught:
            attempt()
        assert time.monotonic() - started < 20  # the retrying path took 35 s; a loaded machine needs slack
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(f"model '{NO_SUCH_MODEL}' is not a local directory, not an alias (known: gpt2, ")
        assert message.endswith("the hub cannot be reached: HF_HUB_OFFLINE is set and it is not in the local hub cache")


def test_hub_failures_are_told_apart_without_retrying(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub import constants, errors

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    calls = []

    def fail_with(error):
        def head(url, timeout=None, **_):
            calls.append(url)
            raise error
        monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", head)

    fail_with(ConnectionError("[Errno -2] Name or service not known"))
    with pytest.raises(ModelError, match=r"and the hub cannot be reached \(\[Errno -2\] Name or service not known\)$"):
        check_layer_in_config(NO_SUCH_MODEL, 0)
    assert calls == [f"{constants.ENDPOINT}/{NO_SUCH_MODEL}/resolve/main/config.json"]  # once, no retries
    fail_with(errors.RepositoryNotFoundError.__new__(errors.RepositoryNotFoundError))
    with pytest.raises(ModelError, match=r"and the hub has no such repo \(or it is private"):
        load_model(NO_SUCH_MODEL)
    with pytest.raises(ModelError, match=r"^model 'gpt2' is an alias of the hub's openai-community/gpt2, and the hub has"):
        load_model("gpt2")
    with pytest.raises(ModelError, match=r"'\./no/such/dir' is not a local directory, .* not a valid hub id"):
        load_model("./no/such/dir")


def test_a_model_directory_with_a_broken_config_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama",\n')
    with pytest.raises(ModelError, match=rf"^model config {tmp_path}/config.json is not valid JSON \(.* line 2, column 1\)$"):
        load_model(str(tmp_path))
    with pytest.raises(ModelError, match="is not valid JSON"):
        check_layer_in_config(str(tmp_path), 0)
    with pytest.raises(ModelError, match="is not valid JSON"):
        check_model_available(str(tmp_path))
    (tmp_path / "config.json").unlink()
    with pytest.raises(ModelError, match=rf"^model directory {tmp_path} has no config.json$"):
        load_model(str(tmp_path))


def test_a_model_cache_that_cannot_be_written_is_named(monkeypatch, tmp_path):
    blocker = tmp_path / "file.txt"  # a path under a regular file is unwritable even for root
    blocker.write_text("not a directory")
    monkeypatch.setenv("MXBENCH_CACHE", str(blocker / "cache"))
    with pytest.raises(ModelError, match=rf"^the model cache {blocker}/cache is not writable \(.*\); set MXBENCH_CACHE"):
        check_cache_writable()
    with pytest.raises(ModelError, match="is not writable"):
        check_model_available("gemma-3-270m")
    check_cache_writable("gpt2")  # only the embedded model is ever written there
    monkeypatch.setenv("MXBENCH_CACHE", str(tmp_path / "fresh"))
    check_cache_writable()
    assert (tmp_path / "fresh").is_dir() and not any((tmp_path / "fresh").iterdir())
