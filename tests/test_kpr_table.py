"""Entity table + vocabulary: memory-mapped lookups and clear errors when they disagree."""
import json

import numpy as np
import pytest

from kvi_engine.kpr.table import TABLE_FILE, VOCAB_FILE, EntityTable, EntityTableError, TableMeta, write_vocab


def make(tmp_path, n=5, dim=4):
    vecs = np.arange(n * dim, dtype=np.float16).reshape(n, dim)
    np.save(tmp_path / TABLE_FILE, vecs)
    write_vocab(tmp_path / VOCAB_FILE, [f"e{i}" for i in range(n)], [f"fp{i}" for i in range(n)],
                TableMeta(dim, 1.0, "test", "enc"))
    return vecs


def test_lookup_is_memory_mapped_and_exact(tmp_path):
    vecs = make(tmp_path)
    t = EntityTable.open(tmp_path)
    assert isinstance(t.vectors, np.memmap) and len(t) == 5 and t.dim == 4
    ids = np.array([[4, 0, 4], [2, 2, 1]])
    out = t.lookup(ids)
    assert out.dtype == np.float32 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, vecs[ids].astype(np.float32))
    assert t.index["e3"] == 3 and t.fingerprints[3] == "fp3"
    with pytest.raises(EntityTableError, match="out of range"):
        t.lookup(np.array([5]))


def test_vocabulary_that_does_not_match_the_table(tmp_path):
    make(tmp_path, n=5)
    write_vocab(tmp_path / VOCAB_FILE, ["a", "b"], ["1", "2"], TableMeta(4, 1.0, "test", "enc"))
    with pytest.raises(EntityTableError, match=r"shape \(5, 4\) does not match.*2 entities"):
        EntityTable.open(tmp_path)
    write_vocab(tmp_path / VOCAB_FILE, [f"e{i}" for i in range(5)], ["x"] * 5, TableMeta(8, 1.0, "test", "enc"))
    with pytest.raises(EntityTableError, match="dim 8"):
        EntityTable.open(tmp_path)


def test_wrong_dtype_truncated_vocab_and_missing_files(tmp_path):
    make(tmp_path)
    np.save(tmp_path / TABLE_FILE, np.zeros((5, 4), np.float32))
    with pytest.raises(EntityTableError, match="float16"):
        EntityTable.open(tmp_path)
    lines = (tmp_path / VOCAB_FILE).read_text().splitlines()
    (tmp_path / VOCAB_FILE).write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(EntityTableError, match="header says 5 entities, file has 4"):
        EntityTable.open(tmp_path)
    (tmp_path / VOCAB_FILE).write_text(json.dumps({"format": "something-else"}) + "\n")
    with pytest.raises(EntityTableError, match="header"):
        EntityTable.open(tmp_path)
    (tmp_path / VOCAB_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="entity vocabulary missing"):
        EntityTable.open(tmp_path)
    make(tmp_path)
    (tmp_path / TABLE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="entity table missing"):
        EntityTable.open(tmp_path)
