"""A tokenizer for a model built with random weights (``--random-weights``): offline, any vocabulary.

A random-weight model has no tokenizer of its own, and the real one is a hub download. Its
numbers mean nothing, so any tokenizer whose ids stay inside the model's vocabulary will do, as
long as it is deterministic (a resumed run and an activation cache must see the same ids) and
spreads real text over many embedding rows, as a real tokenizer does. ``offline_tokenizer``
picks the embedded Gemma 3 tokenizer (real subwords) when the model's vocabulary holds all of
its ids, else ``WordHashTokenizer``: each word or punctuation mark is hashed (BLAKE2b, not
Python's per-process salted ``hash``) to one of the ids above the four special tokens.
"""
from __future__ import annotations

import functools
import hashlib
import re

from transformers import PreTrainedTokenizer

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0..3
_WORDS = re.compile(r"\w+|[^\w\s]")
_ID_TOKEN = re.compile(r"<w(\d+)>")  # how an id above the specials is spelled when decoded
EMBEDDED_VOCAB = 262_144  # the embedded Gemma 3 tokenizer's ids are 0..262,143


class WordHashTokenizer(PreTrainedTokenizer):
    """Words -> ids by hash: id = 4 + BLAKE2b(word) mod (vocab_size - 4); ids 0..3 are pad, bos, eos, unk.

    Decoding cannot recover the words (a hash is one-way): id i reads back as ``<wi>``.
    """

    vocab_files_names: dict = {}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_size: int, **kwargs) -> None:
        if vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"a word-hash tokenizer needs a vocabulary above {len(SPECIAL_TOKENS)} ids "
                             f"(its special tokens), got {vocab_size}")
        self._vocab_size = vocab_size
        self._special_ids = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
        kwargs.setdefault("name_or_path", f"word-hash-{vocab_size}")
        pad, bos, eos, unk = SPECIAL_TOKENS
        super().__init__(pad_token=pad, bos_token=bos, eos_token=eos, unk_token=unk, **kwargs)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def get_vocab(self) -> dict[str, int]:
        """Only the special tokens are stored; every other id is a hash bucket, spelled ``<wi>``."""
        return dict(self._special_ids)

    def __len__(self) -> int:
        return self._vocab_size

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return _WORDS.findall(text)

    def _convert_token_to_id(self, token: str) -> int:
        if token in self._special_ids:
            return self._special_ids[token]
        return _token_id(token, self._vocab_size)

    def _convert_id_to_token(self, index: int) -> str:
        return SPECIAL_TOKENS[index] if index < len(SPECIAL_TOKENS) else f"<w{index}>"

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return " ".join(tokens)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple:
        return ()  # nothing to save: the vocabulary size (in the tokenizer config) is the whole state


@functools.lru_cache(maxsize=2**20)  # text is Zipfian: most words repeat, and hashing dominates the cost
def _token_id(token: str, vocab_size: int) -> int:
    spelled = _ID_TOKEN.fullmatch(token)
    if spelled and len(SPECIAL_TOKENS) <= int(spelled.group(1)) < vocab_size:
        return int(spelled.group(1))
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    return len(SPECIAL_TOKENS) + int.from_bytes(digest, "little") % (vocab_size - len(SPECIAL_TOKENS))


def offline_tokenizer(vocab_size: int):
    """The embedded Gemma 3 tokenizer when all its ids fit in ``vocab_size``, else a word-hash one."""
    if vocab_size >= EMBEDDED_VOCAB:
        from transformers import AutoTokenizer

        from bench.models import embedded_model_dir

        return AutoTokenizer.from_pretrained(embedded_model_dir())
    return WordHashTokenizer(vocab_size)
