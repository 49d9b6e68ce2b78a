"""QuantSpec: the storage scheme of a bank (torch-free, so bank updates and crash tests load fast).

The format itself is specified in :mod:`kvi_engine.bank.quant`.
"""
from __future__ import annotations

from dataclasses import dataclass

FLOAT_SCHEMES = ("fp32", "fp16", "bf16")
QUANT_SCHEMES = ("int8", "int4", "int2", "fp8")
SCHEMES = FLOAT_SCHEMES + QUANT_SCHEMES
KEY_MODES = ("token", "channel")
_BITS = {"int4": 4, "int2": 2}


@dataclass(frozen=True, slots=True)
class QuantSpec:
    scheme: str
    group_size: int = 0        # 0: the scheme's default for the head_dim it is applied to
    key_mode: str = "token"

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown bank storage {self.scheme!r}; supported: {list(SCHEMES)}")
        if self.key_mode not in KEY_MODES:
            raise ValueError(f"key_mode must be one of {KEY_MODES}, got {self.key_mode!r}")
        if self.scheme in FLOAT_SCHEMES and (self.group_size or self.key_mode != "token"):
            raise ValueError(f"{self.scheme} storage takes no group_size or key_mode")
        if self.group_size < 0:
            raise ValueError(f"group_size must be > 0, got {self.group_size}")

    @classmethod
    def parse(cls, quant: "str | dict | QuantSpec") -> "QuantSpec":
        """``"int4"``, ``"int4:g64"``, ``"int8:channel"``, ``"int4:g32:channel"``, a header dict, or a spec."""
        if isinstance(quant, QuantSpec):
            return quant
        if isinstance(quant, dict):
            return cls(quant["scheme"], int(quant.get("group_size", 0)), quant.get("key_mode", "token"))
        if not isinstance(quant, str):
            raise TypeError(f"quant must be a string like 'int4:g64', got {type(quant).__name__}")
        scheme, *opts = quant.split(":")
        group, mode = 0, "token"
        for o in opts:
            if o in KEY_MODES:
                mode = o
            elif o.startswith("g") and o[1:].isdigit():
                group = int(o[1:])
            else:
                raise ValueError(f"bad quant option {o!r} in {quant!r}; expected gN or one of {KEY_MODES}")
        return cls(scheme, group, mode)

    @property
    def quantised(self) -> bool:
        return self.scheme in QUANT_SCHEMES

    @property
    def has_zero(self) -> bool:
        return self.scheme in _BITS

    def group_for(self, head_dim: int) -> int:
        if self.scheme in ("int8", "fp8"):
            if self.group_size not in (0, head_dim):
                raise ValueError(f"{self.scheme} has one scale per token and head: group_size must be head_dim "
                                 f"({head_dim}), got {self.group_size}")
            return head_dim
        g = self.group_size or min(128, head_dim)
        if head_dim % g or g % (8 // _BITS[self.scheme]):
            raise ValueError(f"{self.scheme}: group_size {g} must divide head_dim {head_dim} and hold whole bytes")
        return g

    def code_dim(self, head_dim: int) -> int:
        per_byte = 8 // _BITS.get(self.scheme, 8)
        if head_dim % per_byte:
            raise ValueError(f"{self.scheme}: head_dim {head_dim} is not a multiple of {per_byte}")
        return head_dim // per_byte

    def header(self, head_dim: int) -> dict:
        h = {"scheme": self.scheme}
        if self.quantised:
            h.update(group_size=self.group_for(head_dim), key_mode=self.key_mode)
        return h

    def __str__(self) -> str:
        s = self.scheme + (f":g{self.group_size}" if self.group_size else "")
        return s + (":channel" if self.key_mode == "channel" else "")


def kv_sections(spec: QuantSpec) -> list[str]:
    names = ["k", "v"]
    if spec.quantised:
        names += ["k_scale", "v_scale"] + (["k_zero", "v_zero"] if spec.has_zero else [])
    return names


def capsule_axis(spec: QuantSpec, name: str) -> bool:
    """True for sections indexed by capsule row instead of token (per-channel key params)."""
    return spec.key_mode == "channel" and name in ("k_scale", "k_zero")
