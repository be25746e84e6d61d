"""An on-disk cache of collected (MLP input, MLP output) pairs, reused across runs.

Layout: ``<root>/<slug>-<hash>/`` holds raw shards ``shard-00000.x.bin`` / ``.y.bin``
(row-major [tokens, d], bf16 or fp32, memory-mapped when read) and ``manifest.json``, written
last and atomically. The manifest names everything the activations depend on (model, layer,
corpus, split, context length, tokenizer, dtype) and each shard's size and sha256. A cache
whose key differs, that holds too few tokens, or whose shard fails its size or checksum is
never used: the caller is told why and rebuilds it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch

from bench.results import atomic_write_text

FORMAT_VERSION = 1
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class StaleCache(ValueError):
    """The cache exists but cannot be used as it is (mismatch, too short or corrupt)."""


@dataclass(frozen=True)
class CacheKey:
    model_id: str
    layer: int
    dataset: str
    split: str
    context_length: int
    tokenizer: str
    dtype: str

    def directory(self, root: Path) -> Path:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]
        slug = "".join(c if c.isalnum() or c in "-._" else "_" for c in f"{self.model_id}-L{self.layer}")
        return Path(root) / f"{slug[-60:]}-{digest}"


class CacheWriter:
    """Appends chunks in document order; ``finish()`` seals the cache with its manifest."""

    def __init__(self, directory: Path, key: CacheKey, shard_tokens: int = 2**18) -> None:
        shutil.rmtree(directory, ignore_errors=True)  # never mix with a stale or partial cache
        directory.mkdir(parents=True)
        self.directory, self.key, self.shard_tokens = directory, key, shard_tokens
        self.dtype = DTYPES[key.dtype]
        self.shards: list[dict] = []
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_tokens = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._pending.append((x.detach().to("cpu", self.dtype), y.detach().to("cpu", self.dtype)))
        self._pending_tokens += len(x)
        if self._pending_tokens >= self.shard_tokens:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        x = torch.cat([p[0] for p in self._pending])
        y = torch.cat([p[1] for p in self._pending])
        index = len(self.shards)
        entry = {"tokens": len(x), "d_model": x.shape[1]}
        for name, tensor in (("x", x), ("y", y)):
            path = self.directory / f"shard-{index:05d}.{name}.bin"
            data = tensor.contiguous().view(torch.uint8).numpy().tobytes()
            path.write_bytes(data)
            entry[name] = {"file": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        self.shards.append(entry)
        self._pending, self._pending_tokens = [], 0

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards) + self._pending_tokens

    def finish(self) -> None:
        self._flush()
        manifest = {"format": FORMAT_VERSION, "key": asdict(self.key), "total_tokens": self.tokens,
                    "shards": self.shards}
        atomic_write_text(self.directory / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True))


def open_cache(directory: Path, key: CacheKey, needed_tokens: int) -> dict:
    """The manifest of a usable cache, or StaleCache saying why it cannot be used."""
    path = directory / "manifest.json"
    if not path.is_file():
        raise StaleCache(f"no activation cache at {directory}")
    data = path.read_bytes()
    try:
        manifest = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise StaleCache(f"the activation cache manifest {path} is not UTF-8 text "
                         f"(invalid byte 0x{data[error.start]:02x} at offset {error.start})") from None
    except json.JSONDecodeError as error:
        raise StaleCache(f"the activation cache manifest {path} is corrupt ({error.msg} at line {error.lineno})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise StaleCache(f"the activation cache manifest {path} is corrupt (no list of shards)")
    if manifest.get("format") != FORMAT_VERSION or manifest.get("key") != asdict(key):
        raise StaleCache(f"the activation cache at {directory} was built for other settings")
    if manifest["total_tokens"] < needed_tokens:
        raise StaleCache(f"the activation cache at {directory} holds {manifest['total_tokens']:,} tokens, "
                         f"fewer than the {needed_tokens:,} needed")
    for shard in manifest["shards"]:
        for name in ("x", "y"):
            file = directory / shard[name]["file"]
            if not file.is_file() or file.stat().st_size != shard[name]["bytes"]:
                raise StaleCache(f"activation cache shard {file} is missing or truncated")
    return manifest


def read_chunks(directory: Path, manifest: dict, skip_tokens: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shards in order as (x, y) fp32 chunks, each checked against its sha256 as it is read."""
    dtype = DTYPES[manifest["key"]["dtype"]]
    for shard in manifest["shards"]:
        if skip_tokens >= shard["tokens"]:
            skip_tokens -= shard["tokens"]
            continue
        tensors = []
        for name in ("x", "y"):
            file = directory / shard[name]["file"]
            mapped = torch.from_file(str(file), shared=False, size=shard[name]["bytes"], dtype=torch.uint8)
            if hashlib.sha256(mapped.numpy().tobytes()).hexdigest() != shard[name]["sha256"]:
                raise StaleCache(f"activation cache shard {file} fails its checksum; delete the cache to rebuild it")
            tensors.append(mapped.view(dtype).view(shard["tokens"], shard["d_model"]))
        yield tensors[0][skip_tokens:].float(), tensors[1][skip_tokens:].float()
        skip_tokens = 0
