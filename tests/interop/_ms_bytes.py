"""Bytes as MindSpore's ``save_checkpoint`` writes them, built by hand for the reader tests.

Deliberately independent of ``diffusers_npu.convert.mindspore_ckpt``: protobuf's encoding rules written out again
(python protobuf serializes known fields in field-number order; proto2 ``repeated int64`` unpacked).
"""

from __future__ import annotations

import struct
import zlib


def varint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF
    out = b""
    while n > 0x7F:
        out += bytes([(n & 0x7F) | 0x80])
        n >>= 7
    return out + bytes([n])


def ld(field: int, payload: bytes) -> bytes:
    """Length-delimited field."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def vi(field: int, value: int) -> bytes:
    """Varint field."""
    return varint(field << 3) + varint(value)


def tensor_proto(dims, tensor_type: str, content: bytes, packed: bool = False, extra: bytes = b"") -> bytes:
    dims_bytes = ld(1, b"".join(varint(d) for d in dims)) if packed and dims else b"".join(vi(1, d) for d in dims)
    return dims_bytes + ld(2, tensor_type.encode()) + ld(3, content) + extra


def record(tag: str, dims, tensor_type: str, content: bytes, **kw) -> bytes:
    """One ``Checkpoint`` message holding one ``Value``: what MindSpore appends per parameter slice."""
    return ld(1, ld(1, tag.encode()) + ld(2, tensor_proto(dims, tensor_type, content, **kw)))


def map_record(tag: str) -> bytes:
    """A MapParameter slice: Value.maptensor (field 3) holding TensorProtos."""
    inner = ld(1, tensor_proto([2], "Int64", struct.pack("<2q", 1, 2)))
    return ld(1, ld(1, tag.encode()) + ld(3, inner))


def str_record(tag: str, text: str) -> bytes:
    """``append_dict`` string: dims [0], numpy unicode bytes (UTF-32-LE, one code point per 4 bytes)."""
    return record(tag, [0], "str", text.encode("utf-32-le"))


def with_crc(body: bytes) -> bytes:
    """``save_checkpoint(crc_check=True)``: b"crc_num" + CRC-32 of everything before, 10 bytes big-endian."""
    return body + b"crc_num" + zlib.crc32(body).to_bytes(10, "big")


ENCRYPTED_GCM = struct.pack("<I", 0x7F3A5ED8)
