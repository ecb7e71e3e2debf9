"""The pure-Python MindSpore .ckpt reader/writer against bytes laid out as MindSpore writes them."""

from __future__ import annotations

import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusers_npu.convert import mindspore_ckpt as ms
from diffusers_npu.errors import UserError

from . import _ms_bytes as B


def sample(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        return torch.randn(3, 5, generator=g).to(dtype)
    if dtype == torch.bool:
        return torch.rand(2, 3, generator=g) > 0.5
    info = torch.iinfo(dtype)
    low, high = max(info.min, -(2**31)), min(info.max, 2**31 - 1)
    return torch.randint(low, high, (4, 2), generator=g, dtype=torch.int64).to(dtype)


def raw(t: torch.Tensor) -> bytes:
    """Little-endian element bytes, as ``Tensor.asnumpy().tobytes()`` gives them."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("name", sorted(ms.DTYPES))
def test_reads_every_dtype(tmp_path, name):
    t = sample(ms.DTYPES[name])
    path = tmp_path / "x.ckpt"
    path.write_bytes(B.record("w", list(t.shape), name, raw(t)))
    got = ms.load_ckpt(path).tensors["w"]
    assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t)


def test_scalars_empty_strings_and_skipped_records(tmp_path):
    path = tmp_path / "x.ckpt"
    path.write_bytes(
        B.record("scalar_2x", [], "Float32", struct.pack("<f", 1.5))  # MindSpore 2.x: shape () -> no dims
        + B.record("scalar_old", [0], "Int64", struct.pack("<q", -7))  # older: dims [0] + one element = scalar
        + B.record("empty", [0], "Float16", b"")  # dims [0] and no content: an empty (0,) tensor
        + B.record("empty_2d", [3, 0], "Float32", b"")
        + B.record("random_op", [0], "random_op", b"\x01\x02")
        + B.map_record("table")
        + B.str_record("note", "héllo wörld")
        + B.str_record("blank", "")
    )
    c = ms.load_ckpt(path)
    assert c.tensors["scalar_2x"].shape == () and c.tensors["scalar_2x"].item() == 1.5
    assert c.tensors["scalar_old"].shape == () and c.tensors["scalar_old"].item() == -7
    assert c.tensors["empty"].shape == (0,) and c.tensors["empty"].dtype == torch.float16
    assert c.tensors["empty_2d"].shape == (3, 0)
    assert c.strings == {"note": "héllo wörld", "blank": ""}
    assert set(c.skipped) == {"random_op", "table"}


def test_unknown_fields_packed_dims_and_joined_slices(tmp_path):
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    content = raw(t)
    unknown = B.vi(9, 42) + B.ld(10, b"future") + struct.pack("<B", 15 << 3 | 5) + b"\0\0\0\0"
    path = tmp_path / "x.ckpt"
    path.write_bytes(
        B.vi(7, 1)  # unknown top-level field before the first value
        + B.record("sliced", [3, 4], "Float32", content[:20], packed=True, extra=unknown)
        + B.record("sliced", [3, 4], "Float32", content[20:])  # the next slice of the same tag is joined
        + B.record("after", [1], "Int8", b"\x05")
    )
    c = ms.load_ckpt(path)
    assert torch.equal(c.tensors["sliced"], t)
    assert c.tensors["after"].tolist() == [5]


def test_writer_bytes_match_mindspore_layout(tmp_path):
    """Our writer produces exactly the bytes MindSpore's (one message per record, unpacked dims) would."""
    t, s = torch.randn(2, 3).to(torch.bfloat16), torch.tensor(True)
    path = ms.save_ckpt(tmp_path / "w.ckpt", {"a.weight": t, "flag": s}, {"note": "hi"})
    expected = B.record("a.weight", [2, 3], "BFloat16", raw(t)) + B.record("flag", [], "Bool", b"\x01")
    assert path.read_bytes() == expected + B.str_record("note", "hi")


def test_writer_slices_large_tensors_and_reads_back(tmp_path):
    t = torch.randn(10, 7)
    path = ms.save_ckpt(tmp_path / "w.ckpt", {"big": t}, slice_bytes=64)
    records = list(ms.iter_records(path))
    assert len(records) == (t.numel() * 4 + 63) // 64 and {r.tag for r in records} == {"big"}
    assert torch.equal(ms.load_ckpt(path).tensors["big"], t)


def test_ckpt_safetensors_round_trips_are_exact(tmp_path):
    tensors = {f"t.{name}": sample(dt) for name, dt in ms.DTYPES.items()}
    tensors["scalar"] = torch.tensor(2.25, dtype=torch.float64)
    tensors["empty"] = torch.empty(0, 4)
    ckpt = tmp_path / "a.ckpt"
    ckpt.write_bytes(b"".join(B.record(k, list(v.shape), ms.MS_NAMES[v.dtype], raw(v)) for k, v in tensors.items())
                     + B.str_record("epoch_num", "3"))  # fmt: skip
    st = tmp_path / "a.safetensors"
    ms.ckpt_to_safetensors(ckpt, st)
    loaded = load_file(st)
    assert set(loaded) == set(tensors)
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k
    back = tmp_path / "b.ckpt"
    ms.safetensors_to_ckpt(st, back)
    again = ms.load_ckpt(back)
    assert again.strings == {"epoch_num": "3"}
    for k, v in tensors.items():
        assert again.tensors[k].dtype == v.dtype and torch.equal(again.tensors[k], v), k
    # safetensors -> ckpt -> safetensors: the same tensors, bit for bit
    st2 = tmp_path / "c.safetensors"
    ms.ckpt_to_safetensors(back, st2)
    assert {k: raw(v) for k, v in load_file(st2).items()} == {k: raw(v) for k, v in loaded.items()}


def test_crc_trailer_is_checked(tmp_path):
    body = B.record("w", [2], "Float32", struct.pack("<2f", 1.0, 2.0))
    path = tmp_path / "x.ckpt"
    path.write_bytes(B.with_crc(body))
    assert ms.load_ckpt(path).tensors["w"].tolist() == [1.0, 2.0]
    damaged = bytearray(B.with_crc(body))
    damaged[-20] ^= 0xFF  # a content byte
    path.write_bytes(bytes(damaged))
    with pytest.raises(UserError, match="CRC"):
        ms.load_ckpt(path)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (B.ENCRYPTED_GCM + b"\x00" * 64, "encrypted"),
        (b"PK\x03\x04" + b"\x00" * 40, "not a MindSpore .ckpt"),
        (b"\x80\x04\x95" + b"\x00" * 40, "not a MindSpore .ckpt"),  # a pickle
        (b'{"__metadata__":{}}', "not a MindSpore .ckpt"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path, data, message):
    path = tmp_path / "x.ckpt"
    path.write_bytes(data)
    with pytest.raises(UserError, match=message):
        ms.load_ckpt(path)


@pytest.mark.parametrize("cut", [1, 10, 30])
def test_truncated_file_is_a_clear_error(tmp_path, cut):
    data = B.record("a", [4], "Float32", b"\0" * 16) + B.record("b", [8], "Float32", b"\0" * 32)
    path = tmp_path / "x.ckpt"
    path.write_bytes(data[:-cut])
    with pytest.raises(UserError, match="truncated"):
        ms.load_ckpt(path)


def test_content_size_mismatch_and_unknown_dtype(tmp_path):
    path = tmp_path / "x.ckpt"
    path.write_bytes(B.record("w", [3], "Float32", b"\0" * 8))
    with pytest.raises(UserError, match="need 12 bytes"):
        ms.load_ckpt(path)
    path.write_bytes(B.record("w", [1], "Float8E4M3", b"\0"))
    with pytest.raises(UserError, match="not supported"):
        ms.load_ckpt(path)


def test_safetensors_input_to_cli(tmp_path):
    from diffusers_npu.cli import main

    st = tmp_path / "a.safetensors"
    save_file({"x": torch.ones(2)}, st)
    assert main(["convert", "safetensors-to-ckpt", str(st), str(tmp_path / "a.ckpt")]) == 0
    assert main(["convert", "ckpt-to-safetensors", str(tmp_path / "a.ckpt"), str(tmp_path / "b.safetensors")]) == 0
    assert torch.equal(load_file(tmp_path / "b.safetensors")["x"], torch.ones(2))
