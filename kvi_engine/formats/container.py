"""The one file container of kvi-engine: bank segments, the bank manifest, graph and linker files are all this.

Layout::

    [preamble 64 B] [section] [section] ... [msgpack header]
    preamble = magic "KVIFILE\\0" | u32 container version | u32 reserved | u64 header offset | u64 header length |
               u32 crc32(header) | zero padding to 64 bytes
    header   = {"kind": "kvi-bank" | "kvi-manifest" | "kvi-graph" | "kvi-linker", "version": <version of that
                kind>, "format_version": <container version>, "sections": {name: {offset, nbytes, dtype, shape,
                crc32}}, ...the kind's own fields}

The header comes last so large sections can be streamed in (compile writes KV batch by batch) before their sizes
are known. Sections start on 64-byte boundaries, so every array view is aligned. Opening reads the preamble and the
header only -- O(1) in the file size -- and maps the whole file copy-on-write, so a reader keeps a consistent
snapshot when an update renames a new file over this one or deletes it. Section data is checked against its crc32
when verified. Files of container version 1 (magic "KVIBANK\\0", banks and manifests written before the container
was shared) open unchanged; graph/linker files of the retired "KVISECT" container are refused with a message that
says how to rebuild them.
"""
from __future__ import annotations

import errno
import math
import mmap
import os
import stat
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np

from kvi_engine.utils.atomic import fsync_dir

MAGIC = b"KVIFILE\0"
LEGACY_MAGIC = b"KVIBANK\0"  # container version 1: banks and manifests only
RETIRED_MAGIC = b"KVISECT\0"  # the old graph/linker container
FORMAT_VERSION = 2
_PREAMBLE = struct.Struct("<8sIIQQI")
PREAMBLE_SIZE = 64
ALIGN = 64
_CRC_CHUNK = 1 << 24
RESERVED = ("kind", "version", "format_version", "sections")
KINDS = {"kvi-bank": "KV bank", "kvi-manifest": "KV bank manifest", "kvi-graph": "knowledge graph",
         "kvi-linker": "entity linker"}
REBUILD = {"kvi-graph": "rebuild it with KnowledgeGraph.from_capsules(...).save(dir)",
           "kvi-linker": "rebuild it with EntityLinker.from_entities(...).save(path)",
           "kvi-bank": "recompile the bank (kvi compile)", "kvi-manifest": "recompile the bank (kvi compile)"}

# numpy has no bfloat16: bf16 sections are stored as raw uint16 and viewed as torch.bfloat16.
DTYPES = {"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16, "int8": np.int8, "uint8": np.uint8,
          "int32": np.int32, "int64": np.int64, "bytes": np.uint8}
_NAME_OF = {np.dtype(np.float32): "fp32", np.dtype(np.float16): "fp16", np.dtype(np.int8): "int8",
            np.dtype(np.uint8): "uint8", np.dtype(np.int32): "int32", np.dtype(np.int64): "int64"}


class FormatError(ValueError):
    """A file that is malformed, truncated, corrupt, of another kind or an unsupported version; the message names
    the file (and the section or field at fault)."""


BankFormatError = FormatError  # the name bank code and users know; one type


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


def _nbytes(shape, dtype: str) -> int:
    """Bytes of an array of ``shape`` in checked (arbitrary-precision) arithmetic: a forged shape cannot wrap."""
    return math.prod(shape) * np.dtype(DTYPES[dtype]).itemsize


class ContainerWriter:
    """Streams sections into ``path`` via a temporary file; :meth:`close` writes the header and renames."""

    def __init__(self, path: str | os.PathLike, kind: str, version: int):
        if kind not in KINDS:
            raise ValueError(f"unknown file kind {kind!r}; expected one of {sorted(KINDS)}")
        self.path, self.kind, self.version = Path(path), kind, int(version)
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
        arr = np.ascontiguousarray(array)
        dtype = dtype or _NAME_OF.get(arr.dtype)
        if dtype not in DTYPES or np.dtype(DTYPES[dtype]) != arr.dtype:
            raise TypeError(f"section {name!r}: dtype {arr.dtype} cannot be stored as {dtype!r}")
        off = self._align()
        self.f.write(arr.tobytes())
        self.sections[name] = Section(name, off, arr.nbytes, dtype, tuple(arr.shape), crc32_of(arr))

    def reserve(self, name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        """Allocate a section to be filled in place (large K/V arrays written batch by batch)."""
        nbytes = _nbytes(shape, dtype)
        off = self._align()
        self.f.truncate(off + nbytes)
        self.f.seek(0, os.SEEK_END)
        self._pending[name] = (off, nbytes, dtype, tuple(shape))
        if nbytes == 0:
            return np.zeros(shape, DTYPES[dtype])
        return np.memmap(self.tmp, dtype=DTYPES[dtype], mode="r+", offset=off, shape=tuple(shape))

    def close(self, meta: dict) -> None:
        bad = sorted(set(meta) & set(RESERVED))
        if bad:
            raise ValueError(f"header fields {bad} are the container's own")
        self.f.flush()
        for name, (off, nbytes, dtype, shape) in self._pending.items():
            if nbytes:
                with mmap.mmap(self.f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                    crc = crc32_of(memoryview(mm)[off:off + nbytes])
            else:
                crc = 0
            self.sections[name] = Section(name, off, nbytes, dtype, shape, crc)
        header = dict(meta, kind=self.kind, version=self.version, format_version=FORMAT_VERSION,
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


def write_container(path: str | os.PathLike, kind: str, version: int, meta: dict,
                    arrays: dict[str, np.ndarray]) -> Path:
    """Write a whole container at once (graph and linker files): ``arrays`` become sections in order."""
    w = ContainerWriter(path, kind, version)
    try:
        for name, a in arrays.items():
            w.add(name, a)
        w.close(meta)
    except BaseException:
        w.abort()
        raise
    return Path(path)


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


def _int(x) -> bool:
    return type(x) is int and x >= 0


class Container:
    """Read side of a container: header parsed and the whole file mapped (``np.memmap``, copy-on-write) at once.
    ``kind`` (and ``versions``, the supported versions of that kind) are checked when given. Section views are
    created on first use; mapping is O(1) in the file size (pages load when touched)."""

    def __init__(self, path: str | os.PathLike, kind: str | None = None, versions: tuple[int, ...] = (1,), *,
                 follow_symlinks: bool = True):
        self.path = Path(path)
        what = KINDS.get(kind, "kvi-engine file")
        # One descriptor: the type check, the header and the data all come from the same file version. Without
        # follow_symlinks a symlink is refused by the open itself (O_NOFOLLOW), so no check-then-open race.
        flags = os.O_RDONLY | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, f"no such {what}", str(self.path)) from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise FormatError(f"{self.path}: a symlink, where the {what} must be a regular file") from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise FormatError(f"{self.path}: not a regular file (expected {_article(what)} {what})")
        with os.fdopen(fd, "rb") as f:
            size = st.st_size
            head = f.read(len(MAGIC))
            if head == RETIRED_MAGIC:  # before the size check: small old files get the rebuild message too
                raise FormatError(f"{self.path}: written by an older kvi-engine in the retired 'KVISECT' container; "
                                  f"{REBUILD.get(kind, 'rebuild it with this version')}")
            if size < PREAMBLE_SIZE:
                raise FormatError(f"{self.path}: truncated preamble ({size} of {PREAMBLE_SIZE} bytes; not "
                                  f"{_article(what)} {what})")
            self._buf = np.memmap(f, dtype=np.uint8, mode="c", shape=(size,))  # copy-on-write, whole file
        mm = getattr(self._buf, "_mmap", None)
        if hasattr(mm, "madvise"):
            # Capsules are read at random: without this, readahead and fault-around map ~16 neighbouring pages per
            # touched page (measured: 6.6x the pages touched on a 1M-capsule bank; kvi bench bank-scale).
            mm.madvise(mmap.MADV_RANDOM)
        magic, cversion, _, hoff, hlen, hcrc = _PREAMBLE.unpack_from(self._buf)
        if magic not in (MAGIC, LEGACY_MAGIC):
            raise FormatError(f"{self.path}: not a {what} (unknown magic number)")
        supported = (1,) if magic == LEGACY_MAGIC else (FORMAT_VERSION,)
        if cversion not in supported:
            if cversion > FORMAT_VERSION:
                raise FormatError(f"{self.path}: container version {cversion} is newer than this engine "
                                  f"({FORMAT_VERSION}); upgrade kvi-engine")
            raise FormatError(f"{self.path}: container version {cversion} is not a supported version of magic "
                              f"{magic!r} (supported: {list(supported)})")
        if hoff < PREAMBLE_SIZE or hoff + hlen > size:
            raise FormatError(f"{self.path}: header at {hoff}+{hlen} lies outside the file ({size} bytes): "
                              "truncated file")
        blob = bytes(self._buf[hoff:hoff + hlen])
        if zlib.crc32(blob) != hcrc:
            raise FormatError(f"{self.path}: section 'header' fails its checksum")
        try:
            header = msgpack.unpackb(blob, raw=False, strict_map_key=False)
        except Exception as e:  # noqa: BLE001 -- any decoding failure of a checksummed header is a format error
            raise FormatError(f"{self.path}: header does not decode: {type(e).__name__}: {e}") from None
        if not isinstance(header, dict) or not isinstance(header.get("sections"), dict):
            raise FormatError(f"{self.path}: header is not a map with a 'sections' map")
        if magic == LEGACY_MAGIC:  # version-1 banks and manifests named their kind but had no kind version
            header.setdefault("version", 1)
        self.header, self.format_version = header, cversion
        got = header.get("kind")
        if kind is not None and got != kind:
            raise FormatError(f"{self.path}: not a {kind} file (it is {got!r})")
        if kind is not None and header.get("version") not in versions:
            raise FormatError(f"{self.path}: {kind} version {header.get('version')!r} is not supported by this "
                              f"engine (supported: {list(versions)}); {REBUILD[kind]}")
        self.sections: dict[str, Section] = {}
        for n, s in header["sections"].items():
            ok = isinstance(n, str) and isinstance(s, dict) and isinstance(s.get("dtype"), str) and \
                s["dtype"] in DTYPES and isinstance(s.get("shape"), list) and all(_int(d) for d in s["shape"]) and \
                all(_int(s.get(k)) for k in ("offset", "nbytes", "crc32"))
            if not ok:
                raise FormatError(f"{self.path}: section entry {str(n)[:60]!r} is malformed")
            sec = Section(n, s["offset"], s["nbytes"], s["dtype"], tuple(s["shape"]), s["crc32"])
            if sec.offset < PREAMBLE_SIZE or sec.offset % ALIGN or sec.offset + sec.nbytes > hoff or \
                    _nbytes(sec.shape, sec.dtype) != sec.nbytes:
                raise FormatError(f"{self.path}: section {n!r} has an inconsistent extent or shape")
            self.sections[n] = sec
        self._arrays: dict[str, np.ndarray] = {}

    @property
    def kind(self) -> str | None:
        return self.header.get("kind")

    @property
    def meta(self) -> dict:
        """The header without the container's own fields."""
        return {k: v for k, v in self.header.items() if k not in RESERVED}

    def array(self, name: str) -> np.ndarray:
        arr = self._arrays.get(name)
        if arr is None:
            s = self.sections.get(name)
            if s is None:
                raise FormatError(f"{self.path}: missing section {name!r}")
            if s.nbytes == 0:
                arr = np.zeros(s.shape, DTYPES[s.dtype])
            else:
                arr = self._buf[s.offset:s.offset + s.nbytes].view(DTYPES[s.dtype]).reshape(s.shape)
            self._arrays[name] = arr
        return arr

    def verify(self, names=None) -> None:
        for name in names or self.sections:
            s = self.sections.get(name)
            if s is None:
                raise FormatError(f"{self.path}: missing section {name!r}")
            if s.nbytes and crc32_of(self.array(name)) != s.crc32:
                raise FormatError(f"{self.path}: section {name!r} fails its checksum (corrupt data)")
