"""Forging container files as a malicious writer would: a changed header and section bytes with every checksum
recomputed, so only the semantic checks of a reader can catch them (fuzz and hardening tests)."""
from __future__ import annotations

import zlib
from pathlib import Path

import msgpack

from kvi_engine.formats.container import _PREAMBLE, crc32_of


def read_header(path: str | Path) -> dict:
    raw = Path(path).read_bytes()
    _, _, _, hoff, hlen, _ = _PREAMBLE.unpack_from(raw)
    return msgpack.unpackb(raw[hoff:hoff + hlen], raw=False, strict_map_key=False)


def forge(path: str | Path, header: dict, sections: dict[str, bytes] | None = None, *,
          version: int | None = None) -> None:
    """Re-emit ``path`` with ``header`` and new bytes for ``sections`` (same sizes), checksums recomputed; the
    preamble keeps the file's magic and, unless ``version`` is given, its container version."""
    path = Path(path)
    raw = bytearray(path.read_bytes())
    magic, cversion, *_ = _PREAMBLE.unpack_from(raw)
    for name, data in (sections or {}).items():
        s = header["sections"][name]
        raw[s["offset"]:s["offset"] + len(data)] = data
        s["crc32"] = crc32_of(bytes(data))
    blob = msgpack.packb(header, use_bin_type=True)
    hoff = len(raw) + (-len(raw)) % 64
    raw += bytes(hoff - len(raw)) + blob
    raw[:_PREAMBLE.size] = _PREAMBLE.pack(magic, cversion if version is None else version, 0, hoff, len(blob),
                                          zlib.crc32(blob))
    path.write_bytes(bytes(raw))
