"""Write a safetensors file tensor by tensor, straight from the tensors' memory.

Why not ``safetensors.torch.save``: it serialises the whole file into one bytes object first, so a
training-state save of a 600M-parameter cell (weights and both AdamW moments, 7 GiB) needed that
much memory again, twice over as measured, and on a 24 GB machine the save of a Llama-3.2-3B-sized
cell was what ran out of memory. Here each tensor's bytes go from its own storage to the file in
slices (a CPU tensor is never copied; a GPU tensor is copied to the host one tensor at a time), so a
save costs almost no memory. Python's own file object does the writing, so a full disk raises an
``OSError`` with its errno, and the SHA-256 is taken of exactly the bytes written.

The layout is the safetensors format (an 8-byte little-endian header length, a JSON header padded
with spaces to 8 bytes, then the tensors' bytes back to back); ``safetensors.torch.load_file``
reads the result, and the tests check it does.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import BinaryIO

import torch

DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
SLICE_BYTES = 64 * 2**20  # bytes handed to write() and the hash at a time


def raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes, as a view of its own (CPU, contiguous) storage: no copy."""
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Write ``tensors`` to ``path`` in the safetensors format, synced to disk; returns the file's SHA-256.

    Raises ValueError for a dtype the format has no name for, OSError when the disk refuses a write.
    """
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, tensor in tensors.items():
        if tensor.dtype not in DTYPE_NAMES:
            raise ValueError(f"{name}: dtype {tensor.dtype} cannot be stored (allowed: {sorted(map(str, DTYPE_NAMES))})")
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        _write(handle, digest, memoryview(struct.pack("<Q", len(text)) + text))
        for tensor in tensors.values():
            host = tensor.detach().to("cpu").contiguous()  # no-ops for a contiguous CPU tensor
            _write(handle, digest, raw_bytes(host))
            del host
        handle.flush()
        os.fsync(handle.fileno())
    return digest.hexdigest()


def _write(handle: BinaryIO, digest, data: memoryview) -> None:
    for start in range(0, len(data), SLICE_BYTES):
        piece = data[start:start + SLICE_BYTES]
        handle.write(piece)
        digest.update(piece)
