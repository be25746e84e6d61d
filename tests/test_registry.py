"""The contract every registered method meets, the registry itself, and the plugin paths.

The ``check_*`` functions are the contract; each is parametrised over the built-in methods
and also run on the example plugin (``tests/plugins/dense_mlp_plugin.py``).
"""
from __future__ import annotations

import inspect
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

import methods
from methods import LayerSpec, SparseLayer, create, get_method, load_plugin, method_names, registry
from methods.base import INPUT_SITES, transcoder_budget
from methods.transcoder import Transcoder

SPEC = LayerSpec(d_model=16, d_mlp=64, gated=True, activation="gelu_pytorch_tanh")
SMALL = dict(expansion=8, k=4)  # smallest method here (lowrank-moe-r16) gets 8 experts
BUILTIN = method_names()
PLUGIN = Path(__file__).parent / "plugins" / "dense_mlp_plugin.py"
# (spec, expansion) at which a parameter-matched method must be within MATCH_TOLERANCE of
# the TC budget: realistic shapes, where rounding N or W costs well under 1 %.
MATCH_SHAPES = [
    (LayerSpec(128, 512), 16),
    (LayerSpec(768, 3072), 32),  # GPT-2 small, the paper's setting
    (LayerSpec(640, 2048, gated=True, activation="gelu_pytorch_tanh"), 8),  # Gemma 3 270M smoke
    (LayerSpec(640, 2048, gated=True, activation="gelu_pytorch_tanh"), 32),
]
MATCH_TOLERANCE = 0.01


def make(name: str, **overrides) -> SparseLayer:
    torch.manual_seed(0)
    return create(name, SPEC, **{**SMALL, **overrides})


def randomise_(layer: SparseLayer) -> SparseLayer:
    """Every parameter random (zero-initialised D or W_dec block some gradients), constraints kept."""
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0.0, 0.5)
    layer.constrain()
    return layer


def check_output_shape(name: str) -> None:
    layer = make(name)
    for shape in [(7, SPEC.d_model), (2, 5, SPEC.d_model)]:
        y_hat, codes = layer(torch.randn(shape))
        assert y_hat.shape == shape
        assert codes.values.shape == codes.indices.shape == (*shape[:-1], layer.config.k)


def check_exact_sparsity(name: str) -> None:
    layer = randomise_(make(name))
    _, codes = layer(torch.randn(50, SPEC.d_model))
    assert (codes.values != 0).sum(-1).max() <= layer.config.k
    assert codes.indices.min() >= 0 and codes.indices.max() < layer.n_units
    assert (codes.indices.sort(-1).values.diff(dim=-1) > 0).all(), "a unit selected twice for one token"


def check_gradient_reaches_every_parameter(name: str) -> None:
    layer = randomise_(make(name))
    y_hat, _ = layer(torch.randn(64, SPEC.d_model))
    ((y_hat - torch.randn_like(y_hat)) ** 2).sum().backward()
    for pname, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {pname}"


def check_expected_n_params(name: str) -> None:
    for spec, overrides in [(SPEC, SMALL), (LayerSpec(24, 96), dict(expansion=12, k=2))]:
        layer = create(name, spec, **overrides)
        assert type(layer).expected_n_params(spec, layer.config) == layer.n_params()


def check_k_bounds(name: str) -> None:
    n_units = make(name).n_units
    x = torch.randn(9, SPEC.d_model)
    for k in (1, n_units):
        y_hat, codes = make(name, k=k)(x)
        assert torch.isfinite(y_hat).all() and codes.indices.shape == (9, k)
    for bad_k in (0, n_units + 1):
        with pytest.raises(ValueError, match="k"):
            make(name, k=bad_k)


def check_trains_one_step(name: str) -> None:
    """From its own init (zero blocks included), one Adam step on a batch lowers its loss."""
    layer = make(name)
    x, y = torch.randn(128, SPEC.d_model), torch.randn(128, SPEC.d_model)
    batch = y if layer.input_site == "mlp_output" else x
    optimiser = torch.optim.Adam(layer.parameters(), lr=1e-3)
    before = ((layer(batch)[0] - y) ** 2).mean()
    before.backward()
    layer.project_gradients()
    optimiser.step()
    layer.constrain()
    with torch.no_grad():
        after = ((layer(batch)[0] - y) ** 2).mean()
    assert after < before.detach()


def check_metadata(name: str) -> None:
    entry = get_method(name)
    assert entry.description and "\n" not in entry.description
    assert entry.cls.input_site in INPUT_SITES
    assert "name" in vars(entry.cls), "class reports an inherited name"
    assert make(name).name == name


CHECKS = [
    check_output_shape,
    check_exact_sparsity,
    check_gradient_reaches_every_parameter,
    check_expected_n_params,
    check_k_bounds,
    check_trains_one_step,
    check_metadata,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("name", BUILTIN)
def test_contract(name: str, check) -> None:
    check(name)


@pytest.mark.parametrize("name", [n for n in BUILTIN if get_method(n).hyperparameters()["match_params"]])
@pytest.mark.parametrize("spec,expansion", MATCH_SHAPES)
def test_matched_methods_spend_the_tc_budget(name: str, spec: LayerSpec, expansion: int) -> None:
    entry = get_method(name)
    config = entry.cls.Config(**{**entry.defaults, "expansion": expansion})
    budget = transcoder_budget(spec, expansion)
    assert abs(entry.cls.expected_n_params(spec, config) - budget) <= MATCH_TOLERANCE * budget


def test_builtin_methods_are_registered() -> None:
    lowrank = {"lowrank-moe", "lowrank-moe-r1", "lowrank-moe-r4", "lowrank-moe-r16"}
    expected = {"tc", "stc", "sae", "mxd", "mxd-glu"} | lowrank
    assert expected <= set(BUILTIN)


def test_variants_keep_their_name_and_defaults() -> None:
    for name, rank in [("lowrank-moe-r1", 1), ("lowrank-moe-r4", 4), ("lowrank-moe-r16", 16)]:
        layer = make(name)
        assert layer.name == name and layer.config.rank == rank
        assert get_method(name).hyperparameters()["rank"] == rank
    assert make("lowrank-moe-r4", rank=2).config.rank == 2  # explicit config beats the name's default
    assert get_method("lowrank-moe").cls.name == "lowrank-moe"


def test_unknown_method_lists_the_registered_ones() -> None:
    with pytest.raises(KeyError, match="mxd"):
        create("no-such-method", SPEC)


def test_register_rejects_bad_declarations(scratch_registry) -> None:
    with pytest.raises(TypeError, match="SparseLayer"):
        methods.register("not-a-layer")(dict)
    with pytest.raises(TypeError, match="rank"):
        methods.register("tc-with-rank", rank=3)(Transcoder)

    class Impostor(Transcoder):
        pass

    with pytest.raises(ValueError, match="already registered"):
        methods.register("tc")(Impostor)
    assert methods.register("tc")(Transcoder) is Transcoder  # re-registering the same class is fine


def test_subclass_gets_its_own_name(scratch_registry) -> None:
    @methods.register("tc-child")
    class Child(Transcoder):
        pass

    assert Child.name == "tc-child" and Transcoder.name == "tc"
    assert Child(SPEC, Child.Config(**SMALL)).to_config()["method"] == "tc-child"


def test_plugin_registers_and_meets_the_contract(scratch_registry) -> None:
    assert "dense-mlp" not in method_names()
    load_plugin(PLUGIN)
    load_plugin(PLUGIN)  # loading twice is a no-op, not a duplicate-registration error
    assert "dense-mlp" in method_names()
    assert get_method("dense-mlp").hyperparameters()["match_params"] is False
    for check in CHECKS:
        check("dense-mlp")
    assert make("dense-mlp").n_units == SPEC.d_mlp
    assert make("dense-mlp", match_params=True).n_params() == transcoder_budget(SPEC, SMALL["expansion"])


def test_missing_plugin_file_is_reported(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_plugin(tmp_path / "nope.py")


def test_entry_points_are_imported(scratch_registry, tmp_path, monkeypatch) -> None:
    (tmp_path / "tiny_ep_method.py").write_text(
        "from methods import register\nfrom methods.transcoder import Transcoder\n\n"
        "@register('tiny-ep')\nclass TinyEP(Transcoder):\n    description = 'entry-point test method'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    advertised = [EntryPoint(name="tiny", value="tiny_ep_method", group=registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(registry, "entry_points", lambda group: advertised if group == "mxbench.methods" else [])
    assert registry.load_entry_points() == ["tiny"]
    assert make("tiny-ep").n_units == SMALL["expansion"] * SPEC.d_model


def test_parameter_table_at_gemma_shapes() -> None:
    """Built on the meta device: the module's own count equals the closed form at the real shape."""
    from methods.__main__ import parameter_table

    gemma = LayerSpec(640, 2048, gated=True, activation="gelu_pytorch_tanh")
    rows = parameter_table(gemma, expansion=8, k=32)
    assert [row[0] for row in rows] == method_names()
    assert dict((name, n_params) for name, _, n_params, _ in rows)["tc"] == transcoder_budget(gemma, 8)


def _plugin_file(folder: Path, method: str, class_name: str = "Foo", stem: str = "p") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.py"
    path.write_text(
        "from methods import register\nfrom methods.transcoder import Transcoder\n\n\n"
        f"@register({method!r})\nclass {class_name}(Transcoder):\n    pass\n"
    )
    return path


def test_two_plugin_files_with_one_stem_both_load(scratch_registry, tmp_path) -> None:
    load_plugin(_plugin_file(tmp_path / "a", "foo"))
    load_plugin(_plugin_file(tmp_path / "b", "bar"))
    assert get_method("foo").cls is not get_method("bar").cls
    assert {get_method(n).cls.__module__ for n in ("foo", "bar")} == {
        m for m in sys.modules if m.startswith("mxbench_plugin_p_")}


def test_a_method_name_registered_by_another_file_is_refused_naming_both(scratch_registry, tmp_path) -> None:
    first = _plugin_file(tmp_path / "a", "foo")
    load_plugin(first)
    second = _plugin_file(tmp_path / "b", "foo")  # same stem, same class name, same method name
    with pytest.raises(ValueError) as caught:
        load_plugin(second)
    assert str(caught.value) == (f"plugin {second} registers method 'foo', which {first} already registers; "
                                 "rename one of them")
    assert get_method("foo").cls.__module__ in sys.modules  # the first file's class is still the one registered
    assert inspect.getsourcefile(get_method("foo").cls) == str(first)
    with pytest.raises(ValueError, match=r"registers method 'tc', which .*methods/transcoder.py already registers"):
        load_plugin(_plugin_file(tmp_path / "c", "tc", stem="q"))


def test_a_plugin_with_a_syntax_error_is_one_line_naming_file_and_line(scratch_registry, tmp_path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("from methods import register\n\ndef oops(:\n    pass\n")
    with pytest.raises(ValueError) as caught:
        load_plugin(path)
    assert str(caught.value) == f"plugin {path} has a syntax error at line 3: invalid syntax"
    assert not [m for m in sys.modules if m.startswith("mxbench_plugin_broken")]
