"""Fixtures of the vLLM tests (run by tests/vllm/run.sh in vLLM's own environment; the main suite skips this
folder): tiny checkpoints with their banks, and one vLLM engine at a time with KVIConnector loaded."""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import make_fixtures  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from support import BLOCK, DIFFS, PROMPTS, Trace  # noqa: E402

import kvi_engine as kvi  # noqa: E402
from kvi_engine.integrations.vllm import kv_transfer_config, text_prompt_ids  # noqa: E402

# engine name -> (fixture family, extra LLM arguments)
ENGINES = {name: (name, {}) for name in make_fixtures.FAMILIES}
# a KV cache of 16 blocks for 4 long requests: vLLM preempts (frees) some and later recomputes them
ENGINES["qwen2-preempt"] = ("qwen2", dict(max_model_len=448, max_num_seqs=4, num_gpu_blocks_override=16))


@pytest.fixture(scope="session")
def fixtures_dir(tmp_path_factory) -> Path:
    """KVI_VLLM_FIXTURES (built by run.sh with make_fixtures.py), else built here."""
    given = os.environ.get("KVI_VLLM_FIXTURES")
    if given and (Path(given) / "READY").exists():
        return Path(given)
    out = tmp_path_factory.mktemp("vllm-fixtures")
    make_fixtures.main([str(out)])
    return out


@dataclass
class Engine:
    name: str
    dir: Path
    llm: object
    hf: torch.nn.Module
    tok: object
    banks: dict
    prompts: list[list[int]]
    trace: Trace


@pytest.fixture(scope="session")
def engine(request, fixtures_dir, tmp_path_factory):
    """vLLM (fp32, prefix caching on) serving banks "fp32" and "int8" of the family, and the HF model of the same
    checkpoint. Indirectly parametrized by engine name; pytest groups the tests by engine, so one runs at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM

    family, extra = ENGINES[request.param]
    torch.set_num_threads(1)
    d = fixtures_dir / family
    tok = AutoTokenizer.from_pretrained(d / "model")
    hf = AutoModelForCausalLM.from_pretrained(d / "model", dtype=torch.float32, attn_implementation="sdpa").eval()
    banks = {q: kvi.KVBank.open(d / f"bank-{q}") for q in ("fp32", "int8")}
    for b in banks.values():
        b.check_model(hf)
    trace = Trace(tmp_path_factory.mktemp(f"trace-{request.param}") / "writes.jsonl")
    kw = dict(dtype="float32", enforce_eager=True, block_size=BLOCK, max_model_len=1024, max_num_seqs=8,
              enable_prefix_caching=True, seed=0) | extra
    llm = LLM(str(d / "model"), **kw, kv_transfer_config=kv_transfer_config(
        banks={q: b.root for q, b in banks.items()}, trace_file=str(trace.path)))
    yield Engine(request.param, d, llm, hf, tok, banks, [text_prompt_ids(tok, t) for t in PROMPTS], trace)
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def pytest_terminal_summary(terminalreporter):
    if DIFFS:
        worst, what = max(DIFFS)
        terminalreporter.write_line(f"[kvi-vllm] {len(DIFFS)} requests compared with kvi.inject / HF: tokens "
                                    f"identical, max |dlogprob| {worst:.2e} ({what})")
