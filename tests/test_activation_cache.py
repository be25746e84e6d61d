import pytest
import torch

from bench.activation_cache import CacheKey, CacheWriter, StaleCache, open_cache, read_chunks
from bench.cli import main
from bench.results import RunStore
from tests.test_cli import TINY


def _key(dtype="fp32", layer=2):
    return CacheKey("tiny", layer, "corpus.jsonl", "train", 16, "tok:96", dtype)


def _write(tmp_path, key, chunks, shard_tokens=50):
    directory = key.directory(tmp_path)
    writer = CacheWriter(directory, key, shard_tokens=shard_tokens)
    for x, y in chunks:
        writer.add(x, y)
    writer.finish()
    return directory


def _chunks(n=7, rows=16, d=8):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(rows, d, generator=g), torch.randn(rows, d, generator=g)) for _ in range(n)]


def test_round_trip_in_order_with_skips_across_shards(tmp_path):
    chunks = _chunks()
    directory = _write(tmp_path, _key(), chunks)
    manifest = open_cache(directory, _key(), needed_tokens=112)
    assert manifest["total_tokens"] == 112 and [s["tokens"] for s in manifest["shards"]] == [64, 48]
    x_all = torch.cat([c[0] for c in chunks])
    read = list(read_chunks(directory, manifest))
    assert torch.equal(torch.cat([r[0] for r in read]), x_all)
    assert torch.equal(torch.cat([r[1] for r in read]), torch.cat([c[1] for c in chunks]))
    skipped = torch.cat([r[0] for r in read_chunks(directory, manifest, skip_tokens=70)])
    assert torch.equal(skipped, x_all[70:])


def test_bf16_storage_rounds_and_halves_the_bytes(tmp_path):
    chunks = _chunks()
    directory = _write(tmp_path, _key("bf16"), chunks)
    manifest = open_cache(directory, _key("bf16"), 1)
    assert manifest["shards"][0]["x"]["bytes"] == 64 * 8 * 2
    x = torch.cat([r[0] for r in read_chunks(directory, manifest)])
    torch.testing.assert_close(x, torch.cat([c[0] for c in chunks]).bfloat16().float())


def test_mismatched_short_truncated_and_corrupt_caches_are_refused(tmp_path):
    directory = _write(tmp_path, _key(), _chunks())
    with pytest.raises(StaleCache, match="built for other settings"):
        open_cache(directory, _key("bf16"), 1)  # another key, same directory
    with pytest.raises(StaleCache, match="holds 112 tokens, fewer than the 500"):
        open_cache(directory, _key(), 500)
    shard = directory / "shard-00001.y.bin"
    data = bytearray(shard.read_bytes())
    data[5] ^= 0xFF
    shard.write_bytes(bytes(data))
    manifest = open_cache(directory, _key(), 1)  # same size: only the checksum can tell
    with pytest.raises(StaleCache, match="shard-00001.y.bin fails its checksum"):
        list(read_chunks(directory, manifest))
    shard.write_bytes(bytes(data[:-4]))
    with pytest.raises(StaleCache, match="missing or truncated"):
        open_cache(directory, _key(), 1)
    (directory / "manifest.json").write_text("{not json")
    with pytest.raises(StaleCache, match="manifest .* is corrupt"):
        open_cache(directory, _key(), 1)


def test_an_unfinished_cache_has_no_manifest_and_is_rebuilt(tmp_path):
    key = _key()
    writer = CacheWriter(key.directory(tmp_path), key, shard_tokens=10)
    for x, y in _chunks(3):
        writer.add(x, y)  # interrupted before finish()
    with pytest.raises(StaleCache, match="no activation cache"):
        open_cache(key.directory(tmp_path), key, 1)
    directory = _write(tmp_path, key, _chunks(2))
    assert open_cache(directory, key, 32)["total_tokens"] == 32


# What a cell's training and evaluation produce: nothing here depends on where the activations came from.
CELL_RESULTS = ("nmse", "fve", "cosine", "l0", "dead_units", "never_selected", "ce_clean", "ce_zero", "ce_spliced",
                "delta_ce", "ce_recovered", "kl", "n_params", "trained_tokens", "train_steps")


def test_cells_trained_from_the_cache_equal_cells_trained_from_the_lm(tmp_path, tiny_model_dir, corpus_file, capsys):
    """A run that fills the cache and one that reads it train the same cells, metric for metric, as a
    run without a cache: the cached rows are the LM's rows, in the same order (fp32 storage)."""
    def run(name, *cache):
        assert main(["run", "--model", str(tiny_model_dir), "--dataset", str(corpus_file), "--results-dir",
                     str(tmp_path), "--run-name", name, "--methods", "tc", "--no-figures", *TINY, *cache]) == 0
        return {(r["method"], r["k"]): r for r in RunStore(tmp_path / name).rows()}

    live = run("live")
    filled = run("first", "--activation-cache", str(tmp_path / "cache"))
    assert "building it during this run" in capsys.readouterr().err
    read = run("second", "--activation-cache", str(tmp_path / "cache"))
    assert "reading activations from the cache" in capsys.readouterr().err
    assert sorted(live) == sorted(filled) == sorted(read) == [("tc", 2), ("tc", 4)]
    for cell, row in live.items():
        assert row["status"] == "ok" and row["trained_tokens"] == 2048
        expected = {key: row[key] for key in CELL_RESULTS}
        assert {key: filled[cell][key] for key in CELL_RESULTS} == expected, cell
        assert {key: read[cell][key] for key in CELL_RESULTS} == expected, cell
    assert all(r["activation_cache_dtype"] == "fp32" for r in read.values())


def test_a_manifest_that_is_not_utf8_or_not_a_manifest_is_named(tmp_path):
    directory = _write(tmp_path, _key(), _chunks())
    manifest = directory / "manifest.json"
    text = manifest.read_bytes()
    manifest.write_bytes(text[:20] + b"\xff" + text[21:])
    with pytest.raises(StaleCache, match=rf"^the activation cache manifest {manifest} is not UTF-8 text "
                                         r"\(invalid byte 0xff at offset 20\)$"):
        open_cache(directory, _key(), 1)
    manifest.write_text("[1, 2]")
    with pytest.raises(StaleCache, match=r"is corrupt \(no list of shards\)"):
        open_cache(directory, _key(), 1)
