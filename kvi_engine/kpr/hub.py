"""The on-disk layout of a KPR model directory that Hugging Face and Sentence Transformers load as-is.

  config.json, model.safetensors          KPRConfig / KPRModel (auto_map -> configuration_kpr / modeling_kpr)
  tokenizer.json, tokenizer_config.json   the base word pieces; auto_map -> tokenization_kpr.KPRTokenizer
  configuration_kpr.py, modeling_kpr.py, tokenization_kpr.py   remote code: re-exports from kvi_engine.kpr
  entity_vocab.jsonl, entity_table.npy, entity_linker.bin     the knowledge (see kvi_engine.kpr.table)
  modules.json, sentence_bert_config.json  one ST Transformer module whose output is ``sentence_embedding``
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from kvi_engine.utils.atomic import atomic_open, atomic_write_bytes

REMOTE_CODE = {
    "configuration_kpr.py": "from kvi_engine.kpr.config import KPRConfig  # noqa: F401\n",
    "modeling_kpr.py": "from kvi_engine.kpr.model import KPRModel  # noqa: F401\n",
}
TOKENIZER_REMOTE_CODE = {"tokenization_kpr.py": "from kvi_engine.kpr.tokenizer import KPRTokenizer  # noqa: F401\n"}
HEADER = '"""Remote code of a kvi-engine KPR model: the implementation lives in the installed kvi_engine package."""\n'


def _write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    with open(src, "rb") as fi, atomic_open(dst, "wb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 22)


def write_tokenizer_remote_code(directory: str | os.PathLike) -> None:
    directory = Path(directory)
    for name, body in TOKENIZER_REMOTE_CODE.items():
        atomic_write_bytes(directory / name, (HEADER + body).encode())
    cfg_path = directory / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    cfg["tokenizer_class"] = "KPRTokenizer"
    cfg["auto_map"] = {"AutoTokenizer": [None, "tokenization_kpr.KPRTokenizer"]}
    _write_json(cfg_path, cfg)


def write_remote_code(directory: str | os.PathLike, max_seq_length: int) -> None:
    """Model remote code plus the Sentence Transformers module description."""
    directory = Path(directory)
    for name, body in REMOTE_CODE.items():
        atomic_write_bytes(directory / name, (HEADER + body).encode())
    _write_json(directory / "modules.json",
                [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}])
    _write_json(directory / "sentence_bert_config.json", {
        "max_seq_length": max_seq_length, "do_lower_case": False, "transformer_task": "feature-extraction",
        "modality_config": {"text": {"method": "forward", "method_output_name": "sentence_embedding"}},
        "module_output_name": "sentence_embedding"})
    _write_json(directory / "config_sentence_transformers.json", {"similarity_fn_name": "cosine"})


def save_kpr(model, tokenizer, directory: str | os.PathLike, max_seq_length: int = 256) -> Path:
    """Write ``model`` + ``tokenizer`` (with its knowledge) as one loadable directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.model_max_length = max_seq_length
    tokenizer.save_pretrained(directory)
    write_remote_code(directory, max_seq_length)
    return directory
