"""The engine side of the integration: the ``kv_transfer_config`` that loads :class:`KVIConnector` into vLLM."""
from __future__ import annotations

import os

CONNECTOR = "KVIConnector"
MODULE = "kvi_engine.integrations.vllm.connector"
PARAMS_KEY = "kvi"  # the connector's entry in a request's kv_transfer_params (and in its returned receipt)
DEFAULT_BANK = "default"


def kv_transfer_config(bank=None, *, banks=None, **extra) -> dict:
    """``kv_transfer_config`` for ``LLM(...)``, or as JSON for the OpenAI server's ``--kv-transfer-config``: one
    bank (a path or an open ``KVBank``), or several by name (``banks={name: path}``; a request picks one with
    ``capsule_request(..., bank_name=name)``). ``extra`` goes to the connector as is (``trace_file``: one JSON line
    per write, for tests and debugging)."""
    def path(b) -> str:  # a path, or an open bank (its directory)
        return os.fspath(b) if isinstance(b, (str, os.PathLike)) else str(b.root)

    cfg = dict(extra)
    if bank is not None:
        cfg["bank"] = path(bank)
    if banks:
        cfg["banks"] = {str(k): path(v) for k, v in banks.items()}
    if "bank" not in cfg and not cfg.get("banks"):
        raise ValueError("kv_transfer_config needs a bank (a path) or banks={name: path}")
    return {"kv_connector": CONNECTOR, "kv_connector_module_path": MODULE, "kv_role": "kv_consumer",
            "kv_connector_extra_config": cfg}
