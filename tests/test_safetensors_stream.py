"""bench.safetensors_stream writes files the safetensors library reads back exactly, hashes what it wrote,
and names a dtype it cannot store."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from bench import safetensors_stream
from bench.safetensors_stream import write_safetensors


def _tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "weights": torch.randn(37, 11, generator=generator),
        "half": torch.randn(5, 3, generator=generator).half(),
        "brain": torch.randn(7, generator=generator).bfloat16(),
        "double": torch.randn(2, 2, 2, generator=generator).double(),
        "step": torch.tensor(12.0),  # 0-dim, as AdamW's step is
        "ids": torch.randint(-2**40, 2**40, (6,), generator=generator),
        "counts": torch.randint(0, 2**31 - 1, (4,), dtype=torch.int32, generator=generator),
        "small": torch.randint(-128, 127, (3,), dtype=torch.int8, generator=generator),
        "bytes": torch.randint(0, 255, (9,), dtype=torch.uint8, generator=generator),
        "mask": torch.rand(13, generator=generator) > 0.5,
        "empty": torch.zeros(0, 4),
        "transposed": torch.randn(4, 6, generator=generator).t(),  # not contiguous
    }


@pytest.mark.parametrize("slice_bytes", [64 * 2**20, 7], ids=["one slice", "7-byte slices"])
def test_the_library_reads_back_every_tensor_exactly(tmp_path: Path, monkeypatch, slice_bytes: int) -> None:
    monkeypatch.setattr(safetensors_stream, "SLICE_BYTES", slice_bytes)
    tensors = _tensors()
    path = tmp_path / "state.safetensors"
    digest = write_safetensors(path, tensors, metadata={"format_version": "1"})
    loaded = load_file(str(path))
    assert sorted(loaded) == sorted(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape, name
        assert torch.equal(loaded[name], tensor), name
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"format_version": "1"}
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_header_is_padded_to_eight_bytes_and_the_data_follows_it(tmp_path: Path) -> None:
    """Checked byte by byte from the format's definition, not through our writer's own arithmetic."""
    path = tmp_path / "x.safetensors"
    values = torch.tensor([1.5, -2.0, 3.25], dtype=torch.float32)
    write_safetensors(path, {"a": values, "b": torch.tensor([7], dtype=torch.int64)})
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert length % 8 == 0
    header = json.loads(raw[8:8 + length])
    assert header["a"] == {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}
    assert header["b"] == {"dtype": "I64", "shape": [1], "data_offsets": [12, 20]}
    data = raw[8 + length:]
    assert struct.unpack("<3f", data[:12]) == (1.5, -2.0, 3.25) and struct.unpack("<q", data[12:]) == (7,)


def test_a_dtype_the_format_cannot_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^z: dtype torch.complex64 cannot be stored"):
        write_safetensors(tmp_path / "x.safetensors", {"z": torch.zeros(2, dtype=torch.complex64)})
