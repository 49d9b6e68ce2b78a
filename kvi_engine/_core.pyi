"""Type stub of the native core kvi_engine._core (csrc/bindings.cpp). Arrays are taken without copies: a wrong
dtype raises TypeError, a wrong shape or an inconsistent structure ValueError, an unknown seed IndexError."""
import numpy as np
import numpy.typing as npt

__version__: str

def num_threads_default() -> int: ...
def build_csr(key: npt.NDArray[np.int32], num_keys: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """(indptr [num_keys + 1], order [n]): row ids grouped by key, ascending within a group."""

def ppr(s_indptr: npt.NDArray[np.int64], s_entities: npt.NDArray[np.int32], s_weight: npt.NDArray[np.float32],
        e_indptr: npt.NDArray[np.int64], e_sentences: npt.NDArray[np.int32], e_weight: npt.NDArray[np.float32],
        reset_s: npt.NDArray[np.float32], reset_e: npt.NDArray[np.float32], restart: float,
        iterations: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Personalised PageRank over the sentence-entity mention graph (kvi_engine/graph/ppr.py)."""

class Graph:
    def __init__(self, subj: npt.NDArray[np.int32], rel: npt.NDArray[np.int32], obj: npt.NDArray[np.int32],
                 out_indptr: npt.NDArray[np.int64], out_triples: npt.NDArray[np.int32],
                 in_indptr: npt.NDArray[np.int64], in_triples: npt.NDArray[np.int32],
                 num_entities: int, num_relations: int) -> None: ...
    def traverse_batch(self, seeds: npt.NDArray[np.int64], seeds_indptr: npt.NDArray[np.int64], max_hops: int,
                       allowed: npt.NDArray[np.uint8] | None = None, direction: int = 1, fanout: int = -1,
                       max_candidates: int = -1, num_threads: int = 0
                       ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.int32],
                                  npt.NDArray[np.int32]]:
        """(indptr [Q + 1], triple_ids [M], hops [M], parents [M]); allowed: [1 or max_hops, num_relations];
        direction 1 = out, 2 = in, 3 = both; -1 = no cap."""
    @property
    def num_entities(self) -> int: ...
    @property
    def num_triples(self) -> int: ...
    @property
    def num_relations(self) -> int: ...
    @property
    def memory_bytes(self) -> int: ...

class Normalizer:
    def __init__(self, fold: npt.NDArray[np.uint32], cls: npt.NDArray[np.uint8], pool: npt.NDArray[np.uint32],
                 pool_indptr: npt.NDArray[np.int64], comp_keys: npt.NDArray[np.uint64],
                 comp_vals: npt.NDArray[np.uint32]) -> None: ...
    def normalize(self, text: bytes) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(code points, begin, end): output code point k comes from characters [begin[k], end[k])."""

class Linker:
    def __init__(self, normalizer: Normalizer, blob: bytes, offsets: npt.NDArray[np.int64],
                 entity_ids: npt.NDArray[np.int64], priors: npt.NDArray[np.float32] | None = None) -> None: ...
    def link_batch(self, texts: list[bytes], min_prior: float = 0.0, num_threads: int = 0
                   ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64],
                              npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """(mention_indptr [Q + 1], start [M], end [M], candidate_indptr [M + 1], entity [C], prior [C])."""
    @property
    def num_names(self) -> int: ...
    @property
    def num_keys(self) -> int: ...
    @property
    def num_nodes(self) -> int: ...
    @property
    def memory_bytes(self) -> int: ...

# -- bank codecs (csrc/kvi/quant.h; format spec in kvi_engine/bank/quant.py) -------------------------------------------
def quant_encode_rows(x: npt.NDArray[np.float32], scheme: str, group_size: int, num_threads: int = 0
                      ) -> tuple[npt.NDArray[np.int8] | npt.NDArray[np.uint8], npt.NDArray[np.float16],
                                 npt.NDArray[np.float16] | None]:
    """x [n, d] -> (codes [n, d * bits / 8], scale [n, d / group_size], zero [n, d / group_size] or None)."""
def quant_encode_columns(x: npt.NDArray[np.float32], scheme: str, indptr: npt.NDArray[np.int64], num_threads: int = 0
                         ) -> tuple[npt.NDArray[np.int8] | npt.NDArray[np.uint8], npt.NDArray[np.float16],
                                    npt.NDArray[np.float16] | None]:
    """Per-channel params over row segments (capsules): scale/zero [len(indptr) - 1, d]."""
def quant_gather_decode(codes: npt.NDArray[np.int8] | npt.NDArray[np.uint8], scale: npt.NDArray[np.float16],
                        zero: npt.NDArray[np.float16] | None, scheme: str, head_dim: int,
                        code_rows: npt.NDArray[np.int64], param_rows: npt.NDArray[np.int64], num_threads: int = 0
                        ) -> npt.NDArray[np.float32]:
    """float32 [len(code_rows), head_dim]: codes[code_rows] dequantised with scale/zero[param_rows]."""

# -- fused prefix attention (csrc/kvi/attention.h; contract in kvi_engine/attention.py) ---------------------------
def prefix_attention(query: npt.NDArray[np.float32], own_k: npt.NDArray[np.float32], own_v: npt.NDArray[np.float32],
                     own_mask: npt.NDArray[np.uint8] | None, bank_k: np.ndarray, bank_v: np.ndarray, bank_format: str,
                     prefix_k: np.ndarray, prefix_v: np.ndarray, prefix_format: str, token: npt.NDArray[np.int32],
                     visible: npt.NDArray[np.uint8], cos: npt.NDArray[np.float32], sin: npt.NDArray[np.float32],
                     out: npt.NDArray[np.float32], lse: npt.NDArray[np.float32], scale: float, round: int = 0,
                     k_scale: np.ndarray | None = None, k_zero: np.ndarray | None = None,
                     v_scale: np.ndarray | None = None, v_zero: np.ndarray | None = None, group_size: int = 0,
                     key_per_capsule: bool = False, capsule_row: npt.NDArray[np.int32] | None = None,
                     num_threads: int = 0, vector_width: int = 0) -> None:
    """Writes out [B, Hq, Q, D] and lse [B, Hq, Q] in place. query [B, Hq, Q, D], own_k/own_v [B, Hkv, KV, D],
    own_mask [B, Q, KV] (None: causal); bank_k/bank_v [tokens, Hkv, code_dim] in bank_format (fp32, fp16, bf16 as
    uint16, int8, int4, int2, fp8) with fp16 params [rows, Hkv, D / group_size] (per-capsule keys: [capsules, Hkv, D]
    indexed by capsule_row); token/visible/capsule_row [B, slots], cos/sin [B, slots, D / 2]; round: 0 none, 1 fp16,
    2 bf16 (injected K/V rounded like the reference); vector_width 0 auto, 4 or 8 (AVX2+FMA)."""

def prefix_gather(bank_k: np.ndarray, bank_v: np.ndarray, bank_format: str, prefix_k: np.ndarray, prefix_v: np.ndarray,
                  prefix_format: str, token: npt.NDArray[np.int32], visible: npt.NDArray[np.uint8],
                  cos: npt.NDArray[np.float32], sin: npt.NDArray[np.float32], out_k: npt.NDArray[np.float32],
                  out_v: npt.NDArray[np.float32] | npt.NDArray[np.float16], k_scale: np.ndarray | None = None, k_zero: np.ndarray | None = None,
                  v_scale: np.ndarray | None = None, v_zero: np.ndarray | None = None, group_size: int = 0,
                  key_per_capsule: bool = False, capsule_row: npt.NDArray[np.int32] | None = None,
                  num_threads: int = 0, zero_masked: bool = False) -> None:
    """Writes every visible slot's key (dequantised, rotated) and value into out_k/out_v [B, Hkv, slots, D] float32
    in place; other slots are left as they are, or zeroed with zero_masked. out_v may be float16 for fp16 storage
    (the values' own bits). Bank and table arguments as prefix_attention's."""

def decode_attention(query: npt.NDArray[np.float32], inj_k: npt.NDArray[np.float32],
                     inj_v: npt.NDArray[np.float32] | npt.NDArray[np.float16],
                     inj_valid: npt.NDArray[np.uint8], own_k: npt.NDArray[np.float32],
                     own_v: npt.NDArray[np.float32], own_mask: npt.NDArray[np.uint8] | None,
                     out: npt.NDArray[np.float32], lse: npt.NDArray[np.float32], scale: float,
                     segment: npt.NDArray[np.int32] | None = None, seg_lse: npt.NDArray[np.float32] | None = None,
                     num_threads: int = 0) -> None:
    """Writes out [B, Hq, Q, D] and lse [B, Hq, Q] in place: query attends to the gathered, rotated injected K/V
    [B, Hkv, S, D] (inj_valid [B, S]) and its own K/V [B, Hkv, T, D] (own_mask [B, Q, T], None: causal) as one
    softmax; with segment [B, S] (-1: none) also seg_lse [B, Hq, Q, n], the log-sum-exp over each segment. inj_v
    may be float16 (converted exactly as it loads)."""
