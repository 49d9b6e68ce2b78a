"""The KV bank container (``.kvb``): one memory-mappable file, versioned msgpack header, checksummed sections.

Layout::

    [preamble 64 B] [section] [section] ... [msgpack header]
    preamble = magic "KVIBANK\\0" | u32 format version | u32 reserved | u64 header offset | u64 header length |
               u32 crc32(header) | zero padding to 64 bytes

Sections start on 64-byte boundaries so every tensor view is aligned. The header maps section name ->
{offset, nbytes, dtype, shape, crc32} plus free-form metadata. Opening reads the preamble and the header only:
O(1) in the size of the bank. Section data is checked against its crc32 when verified.
"""
from __future__ import annotations

import errno
import mmap
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np

from kvi_engine.atomic import fsync_dir

MAGIC = b"KVIBANK\0"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<8sIIQQI")
PREAMBLE_SIZE = 64
ALIGN = 64
_CRC_CHUNK = 1 << 24

# numpy has no bfloat16: bf16 sections are stored as raw uint16 and viewed as torch.bfloat16.
DTYPES = {"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16, "int8": np.int8, "uint8": np.uint8,
          "int32": np.int32, "int64": np.int64, "bytes": np.uint8}


class BankFormatError(ValueError):
    """The bank file is malformed, truncated or corrupt; the message names the file and section."""


@dataclass(frozen=True, slots=True)
class Section:
    name: str
    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]
    crc32: int


def crc32_of(buf) -> int:
    if isinstance(buf, np.ndarray):
        buf = buf.reshape(-1).view(np.uint8) if buf.size else b""
    view = memoryview(buf).cast("B")
    crc = 0
    for i in range(0, len(view), _CRC_CHUNK):
        crc = zlib.crc32(view[i:i + _CRC_CHUNK], crc)
    return crc


class ContainerWriter:
    """Streams sections into ``path`` via a temporary file; :meth:`close` writes the header and renames."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        self.f = open(self.tmp, "w+b")
        self.f.write(b"\0" * PREAMBLE_SIZE)
        self.sections: dict[str, Section] = {}
        self._pending: dict[str, tuple[int, int, str, tuple[int, ...]]] = {}

    def _align(self) -> int:
        pos = self.f.seek(0, os.SEEK_END)
        pad = (-pos) % ALIGN
        self.f.write(b"\0" * pad)
        return pos + pad

    def add(self, name: str, array: np.ndarray | bytes, dtype: str | None = None) -> None:
        if name in self.sections or name in self._pending:
            raise ValueError(f"section {name!r} written twice")
        if isinstance(array, (bytes, bytearray)):
            array, dtype = np.frombuffer(array, np.uint8), "bytes"
        dtype = dtype or next(k for k, v in DTYPES.items() if v == array.dtype and k not in ("bf16", "bytes"))
        arr = np.ascontiguousarray(array)
        off = self._align()
        self.f.write(arr.tobytes())
        self.sections[name] = Section(name, off, arr.nbytes, dtype, tuple(arr.shape), crc32_of(arr))

    def reserve(self, name: str, dtype: str, shape: tuple[int, ...]) -> np.memmap:
        """Allocate a section to be filled in place (large K/V arrays written batch by batch)."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[dtype]).itemsize
        off = self._align()
        self.f.truncate(off + nbytes)
        self.f.seek(0, os.SEEK_END)
        self._pending[name] = (off, nbytes, dtype, tuple(shape))
        if nbytes == 0:
            return np.zeros(shape, DTYPES[dtype])
        return np.memmap(self.tmp, dtype=DTYPES[dtype], mode="r+", offset=off, shape=tuple(shape))

    def close(self, meta: dict) -> None:
        self.f.flush()
        for name, (off, nbytes, dtype, shape) in self._pending.items():
            if nbytes:
                with mmap.mmap(self.f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                    crc = crc32_of(memoryview(mm)[off:off + nbytes])
            else:
                crc = 0
            self.sections[name] = Section(name, off, nbytes, dtype, shape, crc)
        header = dict(meta, format_version=FORMAT_VERSION,
                      sections={s.name: {"offset": s.offset, "nbytes": s.nbytes, "dtype": s.dtype,
                                         "shape": list(s.shape), "crc32": s.crc32} for s in self.sections.values()})
        blob = msgpack.packb(header, use_bin_type=True)
        hoff = self._align()
        self.f.write(blob)
        self.f.seek(0)
        self.f.write(_PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, hoff, len(blob), zlib.crc32(blob)))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


class Container:
    """Read side: header parsed on open and the whole file mapped (copy-on-write) at once, so a reader keeps a
    consistent snapshot even when an update renames a new file over this one or deletes it. Section views are
    created on first use; mapping is O(1) in the file size (pages load when touched)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(errno.ENOENT, "no such bank file", str(self.path))
        with open(self.path, "rb") as f:  # one descriptor: header and data come from the same file version
            size = os.fstat(f.fileno()).st_size
            if size < PREAMBLE_SIZE:
                raise BankFormatError(f"{self.path}: truncated preamble ({size} of {PREAMBLE_SIZE} bytes)")
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        if hasattr(self._mm, "madvise"):
            # Capsules are read at random: without this, readahead and fault-around map ~16 neighbouring pages per
            # touched page (measured: 6.6x the pages touched on a 1M-capsule bank; bench/bench_bank_scale.py).
            self._mm.madvise(mmap.MADV_RANDOM)
        magic, version, _, hoff, hlen, hcrc = _PREAMBLE.unpack_from(self._mm)
        if magic != MAGIC:
            raise BankFormatError(f"{self.path}: not a KV bank (bad magic {magic!r})")
        if version > FORMAT_VERSION:
            raise BankFormatError(f"{self.path}: format version {version} is newer than this engine "
                                  f"({FORMAT_VERSION}); upgrade kvi-engine")
        if hoff + hlen > size or hoff < PREAMBLE_SIZE:
            raise BankFormatError(f"{self.path}: header at {hoff}+{hlen} lies outside the file ({size} bytes): "
                                  "truncated file")
        blob = self._mm[hoff:hoff + hlen]
        if zlib.crc32(blob) != hcrc:
            raise BankFormatError(f"{self.path}: section 'header' fails its checksum")
        try:
            self.header = msgpack.unpackb(blob, raw=False, strict_map_key=False)
            self.sections = {str(n): Section(str(n), int(s["offset"]), int(s["nbytes"]), str(s["dtype"]),
                                             tuple(int(d) for d in s["shape"]), int(s["crc32"]))
                             for n, s in self.header["sections"].items()}
        except Exception as e:  # noqa: BLE001 -- any decoding failure of a checksummed header is a format error
            raise BankFormatError(f"{self.path}: header does not decode: {e}") from None
        for s in self.sections.values():
            if s.dtype not in DTYPES or s.offset < PREAMBLE_SIZE or s.nbytes < 0 or s.offset + s.nbytes > hoff or \
                    any(d < 0 for d in s.shape) or \
                    int(np.prod(s.shape, dtype=np.int64)) * np.dtype(DTYPES[s.dtype]).itemsize != s.nbytes:
                raise BankFormatError(f"{self.path}: section {s.name!r} has an inconsistent extent or shape")
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, name: str) -> np.ndarray:
        arr = self._arrays.get(name)
        if arr is None:
            s = self.sections.get(name)
            if s is None:
                raise BankFormatError(f"{self.path}: missing section {name!r}")
            if s.nbytes == 0:
                arr = np.zeros(s.shape, DTYPES[s.dtype])
            else:
                arr = np.frombuffer(self._mm, DTYPES[s.dtype], s.nbytes // np.dtype(DTYPES[s.dtype]).itemsize,
                                    s.offset).reshape(s.shape)
            self._arrays[name] = arr
        return arr

    def verify(self, names=None) -> None:
        for name in names or self.sections:
            s = self.sections.get(name)
            if s is None:
                raise BankFormatError(f"{self.path}: missing section {name!r}")
            if s.nbytes and crc32_of(self.array(name)) != s.crc32:
                raise BankFormatError(f"{self.path}: section {name!r} fails its checksum (corrupt data)")
