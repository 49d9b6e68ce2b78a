"""Past one machine: ingestion and compile on a Ray cluster, into one atomic bank (Ray is the optional extra
``kvi-engine[ray]``; nothing here imports it until a cluster is asked for)."""
from kvi_engine.distributed.cluster import ClusterError, connect, require_ray
from kvi_engine.distributed.compile import DistributedCompile, compile_bank, shards_of
from kvi_engine.distributed.ingest import build_assets, build_open_assets
from kvi_engine.distributed.shards import map_shards
from kvi_engine.distributed.workers import CompilePool, CompileWorker, load_replica

__all__ = ["build_assets", "build_open_assets", "ClusterError", "compile_bank", "CompilePool", "CompileWorker", "connect",
           "DistributedCompile", "load_replica", "map_shards", "require_ray", "shards_of"]
