"""Read and write MindSpore ``.ckpt`` files in pure Python: no MindSpore, no protobuf package.

The file is protobuf, schema ``mindspore/ccsrc/utils/checkpoint.proto`` (MindSpore 2.x)::

    message Checkpoint {
        message Value {
            required string tag = 1;
            oneof value { TensorProto tensor = 2; MapTensorProto maptensor = 3; }
        }
        repeated Value value = 1;
    }
    message TensorProto { repeated int64 dims = 1; required string tensor_type = 2; required bytes tensor_content = 3; }

What ``mindspore.save_checkpoint`` writes (``mindspore/python/mindspore/train/serialization.py``), all handled here:

- one serialized ``Checkpoint`` per record, appended (concatenated protobuf messages merge their repeated field);
  a parameter over 512 MiB is split into consecutive records with the same tag, full dims on each, the content
  cut by bytes. The loader joins consecutive same-tag records, and so do we.
- ``tensor_type`` is ``str(dtype)``: ``Float32``, ``BFloat16``, ``Int64``, ``UInt8``, ``Bool`` ...; ``str`` marks a
  string (``append_dict``), dims ``[0]``, content numpy's UTF-32 bytes. ``random_op`` records hold RNG state.
- scalars: dims ``[]`` (2.x) or ``[0]`` (older); MindSpore's loader reads dims ``[0]`` as a scalar. With dims
  ``[0]``, one element of content is a scalar and no content is an empty ``(0,)`` tensor.
- ``dims`` is proto2 ``repeated int64``, written unpacked; packed is accepted too, as protobuf requires.
- ``save_checkpoint(crc_check=True)`` (2.4+) appends ``b"crc_num"`` + the CRC-32 of the records, 10 bytes big-endian.
- ``enc_key`` files are encrypted: they start with the little-endian int32 magic 0x7F3A5ED8 (AES-GCM) or
  0x7F3A5ED9 (CBC), ``mindspore/core/utils/crypto.h``. They cannot be read without MindSpore and the key.

Files can exceed 2 GiB: records are read one at a time, and one parameter at a time is held in memory.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from ..errors import UserError
from . import existing_file

# serialization.py: SLICE_SIZE = 512 * 1024 (KiB) per record.
SLICE_BYTES = 512 * 1024 * 1024
CRC_TRAILER = b"crc_num"
CRC_TRAILER_LEN = len(CRC_TRAILER) + 10
ENCRYPTED_MAGIC = {0x7F3A5ED8: "AES-GCM", 0x7F3A5ED9: "AES-CBC/SM4-CBC"}
SKIPPED_TAGS = ("random_op",)  # RNG state, not a weight

# MindSpore dtype names (``str(mindspore.float32)`` == "Float32") <-> torch dtypes.
DTYPES: dict[str, torch.dtype] = {
    "Float16": torch.float16,
    "Float32": torch.float32,
    "Float64": torch.float64,
    "BFloat16": torch.bfloat16,
    "Int8": torch.int8,
    "Int16": torch.int16,
    "Int32": torch.int32,
    "Int64": torch.int64,
    "UInt8": torch.uint8,
    "UInt16": torch.uint16,
    "UInt32": torch.uint32,
    "UInt64": torch.uint64,
    "Bool": torch.bool,
}
MS_NAMES: dict[torch.dtype, str] = {dt: name for name, dt in DTYPES.items()}


@dataclass(frozen=True)
class Record:
    """One ``Checkpoint.Value``: a whole parameter or one slice of it. ``kind`` is "tensor" or "maptensor"."""

    tag: str
    dims: tuple[int, ...]
    tensor_type: str
    content: bytes
    kind: str = "tensor"


@dataclass
class CkptContents:
    """What a ``.ckpt`` holds: tensors by tag (file order), string values, and the tags we skipped, with why."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    strings: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


# ---- protobuf wire format ------------------------------------------------------------------------------------


class _Malformed(Exception):
    """Bytes that are not valid protobuf for this schema; turned into a UserError with the file name."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at ``pos``; return (value, next position)."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise _Malformed("varint runs past the end of its message")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise _Malformed("varint longer than 10 bytes")


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield (field number, wire type, value) for each field of one message; skips nothing, checks bounds."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise _Malformed(f"field {number} needs {size} bytes, {len(buf) - pos} left")
            value, pos = buf[pos : pos + size], pos + size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise _Malformed(f"fixed field {number} runs past the end")
            value, pos = bytes(buf[pos : pos + width]), pos + width
        else:  # 3/4 are proto1 groups, 6/7 do not exist: nothing MindSpore writes
            raise _Malformed(f"wire type {wire}")
        yield number, wire, value


def _text(value: int | memoryview, what: str) -> str:
    if not isinstance(value, memoryview):
        raise _Malformed(f"{what} is not length-delimited")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as err:
        raise _Malformed(f"{what} is not UTF-8") from err


def _parse_tensor(buf: memoryview) -> tuple[tuple[int, ...], str, bytes]:
    dims: list[int] = []
    tensor_type, content = None, b""
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 0:
            dims.append(_int64(value))
        elif number == 1 and wire == 2:  # packed repeated int64
            pos = 0
            while pos < len(value):
                dim, pos = _varint(value, pos)
                dims.append(_int64(dim))
        elif number == 2:
            tensor_type = _text(value, "tensor_type")
        elif number == 3 and wire == 2:
            content = bytes(value)
        # any other field: unknown to this schema version, skipped as protobuf does
    if tensor_type is None:
        raise _Malformed("TensorProto without tensor_type")
    return tuple(dims), tensor_type, content


def _parse_value(buf: memoryview) -> Record:
    tag, record = None, None
    for number, wire, value in _fields(buf):
        if number == 1:
            tag = _text(value, "tag")
        elif number == 2 and wire == 2:
            record = ("tensor", *_parse_tensor(value))
        elif number == 3 and wire == 2:
            record = ("maptensor", (), "", b"")
    if tag is None or record is None:
        raise _Malformed("Checkpoint.Value without tag or tensor")
    kind, dims, tensor_type, content = record
    return Record(tag, dims, tensor_type, content, kind)


# ---- reading -------------------------------------------------------------------------------------------------


class _Reader:
    """Sequential reads from the record area of a file, with the CRC-32 of every byte consumed."""

    def __init__(self, f: BinaryIO, end: int):
        self.f, self.end, self.pos, self.crc = f, end, 0, 0

    def read(self, size: int) -> bytes:
        if size > self.end - self.pos:
            raise EOFError
        data = self.f.read(size)
        if len(data) != size:
            raise EOFError
        self.pos += size
        self.crc = zlib.crc32(data, self.crc)
        return data

    def skip(self, size: int) -> None:
        while size:
            size -= len(self.read(min(size, 1 << 24)))

    def varint(self) -> int:
        value = shift = 0
        while True:
            byte = self.read(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift >= 70:
                raise _Malformed("varint longer than 10 bytes")


def _records_end(path: Path, f: BinaryIO) -> tuple[int, int | None]:
    """Check for encryption and a CRC trailer; return (end of the records, expected CRC or None)."""
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{path} is empty; pass a checkpoint written by mindspore.save_checkpoint")
    head = f.read(4)
    magic = struct.unpack("<I", head)[0] if len(head) == 4 else None
    if magic in ENCRYPTED_MAGIC:
        raise UserError(
            f"{path} is an encrypted MindSpore checkpoint ({ENCRYPTED_MAGIC[magic]}); decrypt it with MindSpore "
            "(mindspore.load_checkpoint(path, dec_key=...)) and save it again without enc_key"
        )
    end, crc = size, None
    if size >= CRC_TRAILER_LEN:
        f.seek(size - CRC_TRAILER_LEN)
        trailer = f.read(CRC_TRAILER_LEN)
        if trailer.startswith(CRC_TRAILER):
            end, crc = size - CRC_TRAILER_LEN, int.from_bytes(trailer[len(CRC_TRAILER) :], "big")
    f.seek(0)
    return end, crc


def _next_value(r: _Reader) -> bytes | None:
    """The bytes of the next top-level ``value`` field; unknown top-level fields are skipped. None at the end."""
    while r.pos < r.end:
        key = r.varint()
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed("field number 0 at the top level")
        if wire == 2:
            body = r.read(r.varint()) if number == 1 else r.skip(r.varint())
            if body is not None:
                return body
        elif wire == 0:
            r.varint()
        elif wire in (1, 5):
            r.skip(8 if wire == 1 else 4)
        else:
            raise _Malformed(f"field {number} with wire type {wire} at the top level")
    return None


def iter_records(path: str | os.PathLike[str]) -> Iterator[Record]:
    """Yield the ``Checkpoint.Value`` records of ``path`` in file order, reading one record at a time.

    Raises ``UserError`` for an empty, encrypted, truncated or non-checkpoint file, or a failed CRC check.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is not a file; pass a MindSpore .ckpt")
    with open(path, "rb") as f:
        end, crc_expected = _records_end(path, f)
        r = _Reader(f, end)
        start = count = 0
        try:
            while (body := _next_value(r)) is not None:
                count += 1
                yield _parse_value(memoryview(body))
                start = r.pos
        except EOFError:
            raise UserError(
                f"{path} is truncated: the record at byte {start} runs past the end of the file ({end} bytes); "
                "copy or download the checkpoint again"
            ) from None
        except _Malformed as err:
            raise UserError(
                f"{path} is not a MindSpore .ckpt (protobuf Checkpoint) file: {err} near byte {start}; "
                "pass a file written by mindspore.save_checkpoint"
            ) from None
    if not count:
        raise UserError(f"{path} holds no checkpoint records; pass a file written by mindspore.save_checkpoint")
    if crc_expected is not None and r.crc != crc_expected:
        raise UserError(f"{path} fails its CRC check (file damaged); copy or download the checkpoint again")


def _decode(tag: str, dims: tuple[int, ...], tensor_type: str, buf: bytearray) -> torch.Tensor:
    """Bytes -> tensor. dims () or (0,) with one element of content is a scalar (MindSpore's loader rule)."""
    dtype = DTYPES.get(tensor_type)
    if dtype is None:
        raise UserError(f"{tag!r} has MindSpore tensor_type {tensor_type!r}, which is not supported; "
                        f"supported: {', '.join(DTYPES)}")  # fmt: skip
    itemsize = torch.empty((), dtype=dtype).element_size()
    shape = () if dims == (0,) and len(buf) == itemsize else dims
    numel = 1
    for d in shape:
        numel *= d
    if any(d < 0 for d in shape) or numel * itemsize != len(buf):
        raise UserError(f"{tag!r}: dims {list(dims)} of {tensor_type} need {numel * itemsize} bytes, the file has "
                        f"{len(buf)}; the checkpoint is damaged")  # fmt: skip
    if not buf:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).reshape(shape)


def _decode_str(content: bytes) -> str:
    """numpy ``np.array(s).tobytes()``: UTF-32 (little-endian here), NUL-padded."""
    return content.decode("utf-32-le").rstrip("\x00")


def iter_entries(path: str | os.PathLike[str]) -> Iterator[tuple[str, torch.Tensor | str | None, str]]:
    """Yield (tag, value, note) per parameter, consecutive same-tag slices joined, one parameter in memory.

    ``value`` is a tensor, a ``str`` (``append_dict`` strings), or None for what is skipped (``random_op``, map
    tensors), with the reason in ``note``.
    """
    pending: list[Record] = []

    def flush() -> tuple[str, torch.Tensor | str | None, str]:
        first = pending[0]
        if first.kind != "tensor":
            return first.tag, None, "map tensor (MapParameter), not a weight"
        if first.tag in SKIPPED_TAGS or first.tensor_type in SKIPPED_TAGS:
            return first.tag, None, "random_op (RNG state), not a weight"
        buf = bytearray()
        for rec in pending:
            if (rec.dims, rec.tensor_type) != (first.dims, first.tensor_type):
                raise UserError(f"{first.tag!r}: its slices disagree on dims/type; the checkpoint is damaged")
            buf += rec.content
        if first.tensor_type == "str":
            try:
                return first.tag, _decode_str(bytes(buf)), "string value"
            except UnicodeDecodeError:
                raise UserError(f"{first.tag!r}: its str value is not UTF-32; the checkpoint is damaged") from None
        return first.tag, _decode(first.tag, first.dims, first.tensor_type, buf), ""

    for rec in iter_records(path):
        if pending and rec.tag != pending[0].tag:
            yield flush()
            pending.clear()
        pending.append(rec)
    if pending:
        yield flush()


def load_ckpt(path: str | os.PathLike[str]) -> CkptContents:
    """Read a whole ``.ckpt``: tensors by tag in file order, string values, skipped tags with reasons.

    A tag seen twice, not consecutively, is an error (MindSpore would keep only the last one).
    """
    out = CkptContents()
    for tag, value, note in iter_entries(path):
        if tag in out.tensors or tag in out.strings or tag in out.skipped:
            raise UserError(f"{path}: {tag!r} appears twice, apart; the checkpoint is damaged")
        if isinstance(value, torch.Tensor):
            out.tensors[tag] = value
        elif isinstance(value, str):
            out.strings[tag] = value
        else:
            out.skipped[tag] = note
    return out


# ---- writing -------------------------------------------------------------------------------------------------


def _enc_varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64: negative numbers take 10 bytes, as protobuf writes them
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _enc_field(number: int, payload: bytes) -> bytes:
    return _enc_varint(number << 3 | 2) + _enc_varint(len(payload)) + payload


def _record_head(tag: str, dims: tuple[int, ...], tensor_type: str, content_len: int) -> bytes:
    """Everything of one ``Checkpoint`` record except its content bytes, which follow it in the file."""
    tensor_head = b"".join(_enc_varint(1 << 3 | 0) + _enc_varint(d) for d in dims)  # unpacked, as proto2
    tensor_head += _enc_field(2, tensor_type.encode())
    tensor_head += _enc_varint(3 << 3 | 2) + _enc_varint(content_len)
    tensor_len = len(tensor_head) + content_len
    value_head = _enc_field(1, tag.encode()) + _enc_varint(2 << 3 | 2) + _enc_varint(tensor_len)
    value_len = len(value_head) + tensor_len
    return _enc_varint(1 << 3 | 2) + _enc_varint(value_len) + value_head + tensor_head


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def _write_records(f: BinaryIO, tag: str, dims: tuple[int, ...], tensor_type: str, data: memoryview,
                   slice_bytes: int) -> None:  # fmt: skip
    for i in range(0, max(len(data), 1), slice_bytes):
        chunk = data[i : i + slice_bytes]
        f.write(_record_head(tag, dims, tensor_type, len(chunk)))
        f.write(chunk)


def save_ckpt(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    strings: Mapping[str, str] | None = None,
    slice_bytes: int = SLICE_BYTES,
) -> Path:
    """Write ``tensors`` (and ``strings``) as ``mindspore.save_checkpoint`` does; return the path.

    Written to a temporary file beside ``path`` and renamed into place. Raises ``UserError`` for a dtype
    MindSpore has no name for.
    """
    path = Path(path)
    bad = {k: str(t.dtype) for k, t in tensors.items() if t.dtype not in MS_NAMES}
    if bad:
        raise UserError(f"MindSpore has no dtype for {bad}; convert those tensors first")
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp, "wb") as f:
            for tag, t in tensors.items():
                _write_records(f, tag, tuple(t.shape), MS_NAMES[t.dtype], _tensor_bytes(t), slice_bytes)
            for tag, text in (strings or {}).items():
                data = memoryview(text.encode("utf-32-le") or b"\0" * 4)  # np.array("") is "<U1"
                _write_records(f, tag, (0,), "str", data, slice_bytes)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---- .ckpt <-> .safetensors ----------------------------------------------------------------------------------

STR_META_PREFIX = "mindspore.str."  # string values travel in the safetensors header, which holds only strings


def ckpt_to_safetensors(ckpt: Path, out: Path) -> CkptContents:
    """Copy every tensor of ``ckpt`` into ``out`` unchanged; string values go into the header metadata."""
    from safetensors.torch import save_file

    contents = load_ckpt(ckpt)
    meta = {"format": "pt", **{STR_META_PREFIX + k: v for k, v in contents.strings.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        save_file(contents.tensors, tmp, metadata=meta)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return contents


def safetensors_to_ckpt(path: Path, out: Path) -> int:
    """Write every tensor of a safetensors file (in file order) and its ``mindspore.str.*`` metadata as a .ckpt."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a Mapping)
        meta = f.metadata() or {}
    strings = {k[len(STR_META_PREFIX) :]: v for k, v in meta.items() if k.startswith(STR_META_PREFIX)}
    save_ckpt(out, tensors, strings)
    return len(tensors)


def _run_to_safetensors(args) -> int:
    contents = ckpt_to_safetensors(args.ckpt, args.out)
    for tag, why in contents.skipped.items():
        print(f"skipped {tag!r}: {why}")
    if contents.strings:
        print(f"{len(contents.strings)} string values kept in the header as {STR_META_PREFIX}<tag>")
    print(f"wrote {args.out}: {len(contents.tensors)} tensors")
    return 0


def _run_to_ckpt(args) -> int:
    print(f"wrote {args.out}: {safetensors_to_ckpt(args.safetensors, args.out)} tensors")
    return 0


def add_to_safetensors_args(parser, argv: list[str] | None = None) -> None:
    parser.add_argument("ckpt", type=existing_file, help="MindSpore .ckpt (mindspore.save_checkpoint)")
    parser.add_argument("out", type=Path, help="output .safetensors")
    parser.set_defaults(func=_run_to_safetensors)


def add_to_ckpt_args(parser, argv: list[str] | None = None) -> None:
    parser.add_argument("safetensors", type=existing_file, help="input .safetensors")
    parser.add_argument("out", type=Path, help="output MindSpore .ckpt")
    parser.set_defaults(func=_run_to_ckpt)
