"""Shared fixtures: tiny random causal LMs of each supported architecture, an offline
tokenizer and a local JSONL corpus. Everything is built in-process; nothing is downloaded."""
from __future__ import annotations

import json
import random
import sys

import pytest
import torch

ARCHITECTURES = ("gpt2", "gpt_neox", "llama", "gemma", "gemma2", "gemma3")
VOCAB = 96


def tiny_model(arch: str, n_layers: int = 4, d: int = 32, vocab: int = VOCAB):
    """A randomly initialised causal LM with the real module layout of ``arch``."""
    import transformers as tf

    torch.manual_seed(0)
    if arch == "gpt2":
        config = tf.GPT2Config(n_layer=n_layers, n_embd=d, n_head=4, vocab_size=vocab, n_positions=128)
        model = tf.GPT2LMHeadModel(config)
    elif arch == "gpt_neox":
        config = tf.GPTNeoXConfig(num_hidden_layers=n_layers, hidden_size=d, num_attention_heads=4,
                                  intermediate_size=4 * d, vocab_size=vocab, max_position_embeddings=128)
        model = tf.GPTNeoXForCausalLM(config)
    elif arch == "llama":
        config = tf.LlamaConfig(num_hidden_layers=n_layers, hidden_size=d, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=3 * d, vocab_size=vocab,
                                max_position_embeddings=128)
        model = tf.LlamaForCausalLM(config)
    elif arch == "gemma":  # Gemma 1 (gemma-2b): GLU MLP, RMSNorm scaled by 1 + w, one KV head
        # Gemma ties a sqrt(d)-scaled embedding to the head: at the default init (0.02) a tiny model's
        # logits are ~0.1 and no MLP change moves its next-token distribution measurably.
        config = tf.GemmaConfig(num_hidden_layers=n_layers, hidden_size=d, num_attention_heads=4,
                                num_key_value_heads=1, head_dim=8, intermediate_size=3 * d, vocab_size=vocab,
                                max_position_embeddings=128, initializer_range=0.1)
        model = tf.GemmaForCausalLM(config)
    elif arch == "gemma2":  # Gemma 2: sandwich norms around the MLP, soft-capped attention and output logits
        # A logit cap below the raw logits (|logit| up to ~3), so code that skips the capping shows.
        config = tf.Gemma2Config(num_hidden_layers=n_layers, hidden_size=d, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=8, intermediate_size=3 * d, vocab_size=vocab,
                                 max_position_embeddings=128, sliding_window=16, query_pre_attn_scalar=8,
                                 final_logit_softcapping=1.0, attn_logit_softcapping=5.0, initializer_range=0.1)
        model = tf.Gemma2ForCausalLM(config)
    elif arch == "gemma3":
        config = tf.Gemma3TextConfig(num_hidden_layers=n_layers, hidden_size=d, num_attention_heads=4,
                                     num_key_value_heads=1, head_dim=8, intermediate_size=3 * d,
                                     vocab_size=vocab, max_position_embeddings=128, sliding_window=16,
                                     layer_types=["sliding_attention", "full_attention"] * (n_layers // 2))
        model = tf.Gemma3ForCausalLM(config)
    else:
        raise ValueError(arch)
    return model.eval().requires_grad_(False)


def sentence(rng: random.Random) -> str:
    words = ["the", "cat", "dog", "sat", "on", "a", "mat", "river", "ran", "quickly", "city", "of", "old",
             "music", "war", "king", "light", "water", "green", "small", "history", "is", "was", "and"]
    return " ".join(rng.choice(words) for _ in range(rng.randint(6, 18))) + "."


def make_documents(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"id": f"doc-{i}", "text": " ".join(sentence(rng) for _ in range(rng.randint(2, 6)))} for i in range(n)]


def tiny_tokenizer():
    """A word-level tokenizer trained offline on the fixture vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"], vocab_size=VOCAB)
    tok.train_from_iterator([d["text"] for d in make_documents(50)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(params=ARCHITECTURES)
def any_arch_model(request):
    return request.param, tiny_model(request.param)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in make_documents(600)))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama with its tokenizer saved as a local model directory (a `--model` path)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def scratch_registry(monkeypatch):
    """A throw-away copy of the method registry, so a test's registrations (plugins) do not leak."""
    from methods import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    yield registry._REGISTRY
    for module in [m for m in sys.modules if m.startswith("mxbench_plugin_") or m == "tiny_ep_method"]:
        del sys.modules[module]
