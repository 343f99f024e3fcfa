"""binidx files: checked with an independent `struct` reader, plus our memmap reader and its errors."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from rwkv1c.data.binidx import BinIdxReader, BinIdxWriter
from rwkv1c.errors import UserError


def read_idx_independently(path: Path) -> dict:
    """Parse a Megatron MMIDIDX index from the format description alone."""
    data = path.read_bytes()
    magic = data[:9]
    version, dtype_code = struct.unpack_from("<QB", data, 9)
    n, n_doc = struct.unpack_from("<QQ", data, 18)
    at = 34
    sizes = list(struct.unpack_from(f"<{n}i", data, at))
    at += 4 * n
    pointers = list(struct.unpack_from(f"<{n}q", data, at))
    at += 8 * n
    doc_idx = list(struct.unpack_from(f"<{n_doc}q", data, at))
    at += 8 * n_doc
    return {
        "magic": magic,
        "version": version,
        "dtype": dtype_code,
        "sizes": sizes,
        "pointers": pointers,
        "doc_idx": doc_idx,
        "trailing": len(data) - at,
    }


def read_mask_independently(path: Path) -> tuple[bytes, int, list[int]]:
    data = path.read_bytes()
    magic, version, count = struct.unpack_from("<8sQQ", data, 0)
    assert version == 1
    return magic, count, list(data[24:])


def make_docs(rng: np.random.Generator) -> list[np.ndarray]:
    docs = [rng.integers(0, 65536, size=int(n), dtype=np.int64) for n in rng.integers(1, 300, size=20)]
    docs.append(np.array([0, 65535, 1], dtype=np.int64))  # the extreme ids survive uint16
    docs.append(rng.integers(1, 65536, size=70_000))  # longer than 65535 tokens: sizes are int32
    return docs


def test_format_matches_independent_reader(tmp_path: Path) -> None:
    docs = make_docs(np.random.default_rng(0))
    prefix = tmp_path / "sub" / "data_text_document"
    with BinIdxWriter(prefix) as writer:
        writer.add(docs[0].tolist())  # a plain list works too
        writer.add_batch(np.concatenate(docs[1:5]), np.array([d.size for d in docs[1:5]]))
        for doc in docs[5:]:
            writer.add(doc)
    idx = read_idx_independently(prefix.with_name(prefix.name + ".idx"))
    assert idx["magic"] == b"MMIDIDX\x00\x00"
    assert (idx["version"], idx["dtype"], idx["trailing"]) == (1, 8, 0)
    sizes = [d.size for d in docs]
    assert idx["sizes"] == sizes
    assert idx["pointers"] == [2 * s for s in np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()]
    assert idx["doc_idx"] == list(range(len(docs) + 1))
    stream = np.fromfile(prefix.with_name(prefix.name + ".bin"), dtype="<u2")
    assert stream.tolist() == np.concatenate(docs).tolist()
    assert not prefix.with_name(prefix.name + ".mask").exists()  # no masked document, no mask file
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["data_text_document.bin", "data_text_document.idx"]


def test_reader(tmp_path: Path) -> None:
    docs = make_docs(np.random.default_rng(1))
    with BinIdxWriter(tmp_path / "d") as writer:
        for doc in docs:
            writer.add(doc)
    for name in ("d", "d.bin", "d.idx"):
        reader = BinIdxReader(tmp_path / name)
        assert len(reader) == len(docs)
        assert reader.total_tokens == sum(d.size for d in docs)
        assert reader.sizes.tolist() == [d.size for d in docs]
        assert not reader.has_mask
    for i, doc in enumerate(docs):
        assert reader.tokens(i).dtype == np.uint16
        assert reader.tokens(i).tolist() == doc.tolist()
        assert reader.mask(i) is None
    assert reader.tokens(-1).tolist() == docs[-1].tolist()
    with pytest.raises(IndexError):
        reader.tokens(len(docs))


def test_mask_file_lines_up_with_tokens(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    docs = [rng.integers(1, 65536, size=int(n)) for n in (5, 3, 8, 4, 6)]
    masks: list[np.ndarray | None] = [None, None, rng.integers(0, 2, size=8), None, rng.integers(0, 2, size=6)]
    with BinIdxWriter(tmp_path / "m") as writer:
        for doc, mask in zip(docs, masks, strict=True):
            writer.add(doc, mask)
    magic, count, values = read_mask_independently(tmp_path / "m.mask")
    expected = [
        v for doc, mask in zip(docs, masks, strict=True) for v in (np.ones(doc.size, int) if mask is None else mask)
    ]
    assert magic == b"RWKVMASK"
    assert count == sum(d.size for d in docs) == len(values)
    assert values == expected  # documents before the first mask were back-filled as trained
    reader = BinIdxReader(tmp_path / "m")
    assert reader.has_mask
    for i, (doc, mask) in enumerate(zip(docs, masks, strict=True)):
        got = reader.mask(i)
        assert got is not None and got.dtype == np.bool_ and got.size == doc.size
        assert got.tolist() == (np.ones(doc.size, bool) if mask is None else mask.astype(bool)).tolist()


def test_rewriting_a_prefix_removes_its_old_mask(tmp_path: Path) -> None:
    with BinIdxWriter(tmp_path / "x") as writer:
        writer.add([1, 2], [0, 1])
    assert (tmp_path / "x.mask").exists()
    with BinIdxWriter(tmp_path / "x") as writer:
        writer.add([3, 4, 5])
    assert not (tmp_path / "x.mask").exists()
    assert BinIdxReader(tmp_path / "x").mask(0) is None


def test_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), BinIdxWriter(tmp_path / "x") as writer:
        writer.add([1, 2, 3], [1, 0, 1])
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_the_previous_dataset(tmp_path: Path) -> None:
    with BinIdxWriter(tmp_path / "x") as writer:
        writer.add([7, 8])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError), BinIdxWriter(tmp_path / "x") as writer:
        writer.add([1, 2, 3])
        writer.add([70_000])  # not a uint16 token
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("bad", [[-1], [65536], [1.5]])
def test_writer_rejects_bad_tokens(tmp_path: Path, bad) -> None:
    writer = BinIdxWriter(tmp_path / "x")
    with pytest.raises(ValueError):
        writer.add(bad)
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_mismatched_batch(tmp_path: Path) -> None:
    with BinIdxWriter(tmp_path / "x") as writer:
        with pytest.raises(ValueError, match="sizes sum"):
            writer.add_batch(np.array([1, 2, 3], np.uint16), np.array([2]))
        with pytest.raises(ValueError, match="mask"):
            writer.add_batch(np.array([1, 2, 3], np.uint16), np.array([3]), np.array([1, 1]))
        writer.add([1])
    assert len(BinIdxReader(tmp_path / "x")) == 1


def test_empty_dataset_is_readable(tmp_path: Path) -> None:
    with BinIdxWriter(tmp_path / "e"):
        pass
    reader = BinIdxReader(tmp_path / "e")
    assert len(reader) == 0 and reader.total_tokens == 0
    assert read_idx_independently(tmp_path / "e.idx")["doc_idx"] == [0]


def _dataset(tmp_path: Path, mask: bool = False) -> Path:
    with BinIdxWriter(tmp_path / "x") as writer:
        writer.add([1, 2, 3], [0, 1, 1] if mask else None)
        writer.add([4, 5])
    return tmp_path / "x"


def test_reader_reports_missing_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing"):
        BinIdxReader(tmp_path / "nothing")
    prefix = _dataset(tmp_path)
    (tmp_path / "x.idx").unlink()
    with pytest.raises(UserError, match=r"x\.idx"):
        BinIdxReader(prefix)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda p: p.with_suffix(".idx").write_bytes(b"NOTANIDX" + p.with_suffix(".idx").read_bytes()[8:]), "MMIDIDX"),
        (lambda p: p.with_suffix(".idx").write_bytes(p.with_suffix(".idx").read_bytes()[:20]), "shorter"),
        (lambda p: p.with_suffix(".idx").write_bytes(p.with_suffix(".idx").read_bytes()[:-8]), "header implies"),
        (lambda p: p.with_suffix(".bin").write_bytes(p.with_suffix(".bin").read_bytes()[:-2]), "lists 5 tokens"),
        (lambda p: p.with_suffix(".mask").write_bytes(p.with_suffix(".mask").read_bytes()[:-1]), "header implies 29"),
        (lambda p: p.with_suffix(".mask").write_bytes(b"BADMAGIC" + p.with_suffix(".mask").read_bytes()[8:]), "mask"),
    ],
)
def test_reader_reports_damaged_files(tmp_path: Path, damage, expected: str) -> None:
    prefix = _dataset(tmp_path, mask=True)
    damage(prefix)
    with pytest.raises(UserError, match=expected):
        BinIdxReader(prefix)


def test_mask_for_another_dataset_is_refused(tmp_path: Path) -> None:
    prefix = _dataset(tmp_path, mask=True)
    data = bytearray((tmp_path / "x.mask").read_bytes())
    data[16:24] = struct.pack("<Q", 4)  # the header claims 4 tokens; the dataset has 5
    (tmp_path / "x.mask").write_bytes(bytes(data[:-1]))
    with pytest.raises(UserError, match="holds 4 entries; the dataset has 5 tokens"):
        BinIdxReader(prefix)


def test_dtype_code_other_than_uint16_is_refused(tmp_path: Path) -> None:
    prefix = _dataset(tmp_path)
    data = bytearray((tmp_path / "x.idx").read_bytes())
    data[17] = 4  # int32
    (tmp_path / "x.idx").write_bytes(bytes(data))
    with pytest.raises(UserError, match="dtype code 4"):
        BinIdxReader(prefix)
