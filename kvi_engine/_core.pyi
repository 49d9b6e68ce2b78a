"""Type stub of the native core kvi_engine._core (csrc/bindings.cpp). Arrays are taken without copies: a wrong
dtype raises TypeError, a wrong shape or an inconsistent structure ValueError, an unknown seed IndexError."""
import numpy as np
import numpy.typing as npt

__version__: str

def num_threads_default() -> int: ...
def build_csr(key: npt.NDArray[np.int32], num_keys: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """(indptr [num_keys + 1], order [n]): row ids grouped by key, ascending within a group."""

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

# -- bank codecs (csrc/kvi/quant.h; format spec in kvi_engine/quant.py) -------------------------------------------
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
