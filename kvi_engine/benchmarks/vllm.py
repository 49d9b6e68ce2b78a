"""``kvi bench vllm``: vLLM with capsules injected by KVIConnector vs vLLM with the same statements as prompt text vs
plain vLLM, one engine, one run (needs vLLM's own environment: ``bash tests/vllm/env.sh``).

    .venv-vllm/bin/kvi bench vllm                   # ~100M random Qwen2-family CPU model, fp32, capsules 8/32/128
    .venv-vllm/bin/kvi bench vllm --model DIR       # a local HF checkpoint (its bank is compiled here first)
    kvi bench vllm --dtype bfloat16 --batch 32      # on a GPU (bench/gpu.sh)

Methods, at the token level so the work compares exactly: ``vllm`` gets the prompt alone; ``vllm+text`` the very
statement tokens a bank holds (shared prefix, capsules back to back) before the prompt; ``vllm+kvi`` as many
placeholder tokens, whose KV the connector writes from the bank, before the prompt. TTFT: one request with
``max_tokens=1``, wall time of ``LLM.generate`` (request in hand -> first token; for vllm+kvi it includes validating
the request, gathering the capsules from the bank and writing them into vLLM's cache). Throughput: ``--batch``
requests with distinct prompts (and, for vllm+kvi, distinct capsule sets), ``--new-tokens`` each, generated tokens
per second. vLLM's prefix cache is off unless ``--prefix-caching``, so every request computes (or loads) its
knowledge. Methods are timed round-robin; ratios to plain vLLM are the median of per-round ratios.
Writes bench/results/vllm_<device>.{json,csv}.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kvi_engine.benchmarks import results
from kvi_engine.benchmarks.timing import paired_ratio, timed_interleaved

METHODS = ("vllm", "vllm+text", "vllm+kvi")
NEEDS_VLLM = ("kvi bench vllm needs vLLM, which keeps its own environment: run `bash tests/vllm/env.sh` in a "
              "checkout, then `.venv-vllm/bin/kvi bench vllm`")


@dataclass(slots=True)
class VllmRow:
    method: str
    capsules: int
    prompt_tokens: int
    knowledge_tokens: int
    ttft_ms: float
    ttft_ms_min: float
    ttft_ratio_paired: float
    batch: int
    new_tokens: int
    tokens_per_s: float
    throughput_vs_plain: float  # median per-round (plain time / this time): > 1 is faster than plain


def _workdir(args) -> Path:
    d = Path(args.workdir or os.environ.get("KVI_VLLM_BENCH_DIR", "out/vllm-bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def prepare(args) -> tuple[str, object, object]:
    """``(model_dir, tokenizer, bank)``: the checkpoint vLLM loads and a bank of synthetic capsules compiled by the
    same weights (kept in the work directory; rebuilt when missing)."""
    import torch

    from kvi_engine.bank.bank import KVBank
    from kvi_engine.benchmarks.ttft import synthetic_capsules
    from kvi_engine.compile.compiler import compile_bank

    work = _workdir(args)
    n = max(args.capsules)
    if args.model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = args.model
        tok = AutoTokenizer.from_pretrained(model_dir)
        bank_dir = work / f"bank-{Path(model_dir).name}-{n}"
        if not (bank_dir / "bank.kvb").exists():
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
            compile_bank(model, tok, synthetic_capsules(n), bank_dir, quant=args.quant, batch_size=32)
        return model_dir, tok, KVBank.open(bank_dir)
    from transformers import AutoTokenizer

    from kvi_engine.testing.tiny import bench_model

    model_dir, bank_dir = work / "bench-model", work / f"bank-bench-model-{n}-{args.quant}"
    if not (model_dir / "config.json").exists() or not (bank_dir / "bank.kvb").exists():
        model, tok = bench_model()
        model.save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        compile_bank(model, tok, synthetic_capsules(n), bank_dir, quant=args.quant, batch_size=32)
    return str(model_dir), AutoTokenizer.from_pretrained(model_dir), KVBank.open(bank_dir)


def questions(tok, count: int, length: int) -> list[list[int]]:
    """``count`` distinct prompts of ``length`` tokens (no special tokens: the bank's prefix is part of the
    knowledge)."""
    out = []
    for q in range(count):
        text = " ".join(f"Question {q}.{i}: which district holds station {i} of survey {q}?" for i in range(60))
        out.append(tok(text, add_special_tokens=False).input_ids[:length])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="kvi bench vllm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="local HF checkpoint dir (default: the ~100M random CPU bench model)")
    ap.add_argument("--capsules", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8, help="requests in the throughput batch")
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens generated per request (throughput)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float32", help="vLLM dtype (float32 on the CPU; bfloat16 on a GPU)")
    ap.add_argument("--quant", default="fp32", help="bank storage scheme (fp32, fp16, int8, ...)")
    ap.add_argument("--block-size", type=int, default=None, help="vLLM block size (default: 32 on the CPU)")
    ap.add_argument("--prefix-caching", action="store_true", help="leave vLLM's prefix cache on")
    ap.add_argument("--workdir", help="where the checkpoint and bank are kept (default out/vllm-bench)")
    ap.add_argument("--out", default=None, help="result stem (default bench/results/vllm_<device>)")
    args = ap.parse_args(argv)
    try:
        from vllm import LLM, SamplingParams  # noqa: F401 (both needed; a stray vllm folder has neither)
        from vllm.platforms import current_platform
    except ImportError:
        print(NEEDS_VLLM, file=sys.stderr)
        return 2
    from kvi_engine.integrations.vllm import kv_transfer_config

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    device = "cpu" if current_platform.is_cpu() else current_platform.device_type
    out = args.out or str(results.default_out(f"vllm_{device}"))
    model_dir, tok, bank = prepare(args)
    if max(args.capsules) > bank.num_capsules:
        raise ValueError(f"--capsules {max(args.capsules)}: the bank holds {bank.num_capsules}")
    block = args.block_size or (32 if device == "cpu" else None)
    t0 = time.perf_counter()
    llm = LLM(model_dir, dtype=args.dtype, enforce_eager=device == "cpu", max_model_len=4096, seed=0,
              enable_prefix_caching=args.prefix_caching, max_num_seqs=max(args.batch, 1),
              kv_transfer_config=kv_transfer_config(bank), **({"block_size": block} if block else {}))
    startup = time.perf_counter() - t0
    try:
        return _measure(args, llm, tok, bank, model_dir, device, out, startup)
    finally:  # vLLM's engine-core and worker processes outlive a main process that does not stop them
        llm.llm_engine.engine_core.shutdown()


def _measure(args, llm, tok, bank, model_dir, device, out, startup) -> int:
    from tqdm.auto import tqdm
    from vllm import SamplingParams

    from kvi_engine.integrations.vllm import capsule_request

    prompts = questions(tok, args.batch + 1, args.prompt_tokens)
    ttft_kw = dict(temperature=0.0, max_tokens=1)
    thr_kw = dict(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True)
    agreement = one_capsule_agreement(llm, bank, prompts[0], SamplingParams, capsule_request)
    rows = []
    for n in tqdm(args.capsules, desc="vllm"):
        sets = [[(j + i) % bank.num_capsules for j in range(n)] for i in range(args.batch + 1)]  # distinct sets
        knowledge = [bank.prefix_token_ids + [t for c in s for t in bank.token_ids(c)] for s in sets]

        def requests(method: str, rows_: range):
            if method == "vllm":
                return [{"prompt_token_ids": prompts[i]} for i in rows_], [None] * len(rows_)
            if method == "vllm+text":
                return [{"prompt_token_ids": knowledge[i] + prompts[i]} for i in rows_], [None] * len(rows_)
            reqs = [capsule_request(bank, sets[i], prompts[i]) for i in rows_]
            return [r.prompt for r in reqs], reqs

        def run(method: str, rows_: range, kw: dict):
            # requests built inside the timed call: TTFT counts building the request as the user would
            ps, reqs = requests(method, rows_)
            params = [SamplingParams(**kw) if r is None else r.sampling_params(**kw) for r in reqs]
            outs = llm.generate(ps, params, use_tqdm=False)
            if method == "vllm+kvi" and any(o.outputs[0].finish_reason == "error" for o in outs):
                raise RuntimeError("vLLM failed an injected request (see the engine log)")
            return outs

        ttft = timed_interleaved({m: (lambda m=m: run(m, range(args.batch, args.batch + 1), ttft_kw))
                                  for m in METHODS}, args.repeats)
        thr = timed_interleaved({m: (lambda m=m: run(m, range(args.batch), thr_kw)) for m in METHODS},
                                args.repeats)
        for m in METHODS:
            rows.append(VllmRow(m, n, len(prompts[0]), 0 if m == "vllm" else len(knowledge[0]),
                                1e3 * statistics.median(ttft[m]), 1e3 * min(ttft[m]),
                                paired_ratio(ttft[m], ttft["vllm"]), args.batch, args.new_tokens,
                                args.batch * args.new_tokens / statistics.median(thr[m]),
                                paired_ratio(thr["vllm"], thr[m])))
    print(f"vLLM {device}, {args.dtype}, model {model_dir}, bank {bank.quant['scheme']} "
          f"(~{bank.num_tokens / bank.num_capsules:.1f} tokens/capsule); engine start {startup:.1f} s")
    print(f"sanity: one capsule injected vs the same tokens as text, {agreement['of']} greedy tokens: "
          f"{agreement['identical_prefix']} identical before the first difference")
    print(results.format_table(rows, ["method", "capsules", "knowledge_tokens", "ttft_ms", "ttft_ms_min",
                                      "ttft_ratio_paired", "tokens_per_s", "throughput_vs_plain"]))
    doc = results.write(out, "vllm", rows, vars(args), device=device, model=str(model_dir),
                        engine_start_s=startup, vllm=_version(),
                        agreement_1capsule=agreement)
    print(f"wrote {out}.json / .csv ({doc['commit'] or 'no commit'})")
    return 0


def one_capsule_agreement(llm, bank, prompt, SamplingParams, capsule_request, steps: int = 16) -> dict:
    """Greedy tokens with one capsule injected vs the same tokens as prompt text (one capsule: the same sequence,
    exactly): how many leading tokens agree. All of them in fp32; a quick check of the cache write elsewhere."""
    kw = dict(temperature=0.0, max_tokens=steps, ignore_eos=True)
    req = capsule_request(bank, [0], prompt)
    text = {"prompt_token_ids": bank.prefix_token_ids + bank.token_ids(0) + list(prompt)}
    a, b = llm.generate([req.prompt, text], [req.sampling_params(**kw), SamplingParams(**kw)], use_tqdm=False)
    ta, tb = list(a.outputs[0].token_ids), list(b.outputs[0].token_ids)
    same = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), min(len(ta), len(tb)))
    return {"identical_prefix": same, "of": steps, "injected": ta, "text": tb}


def _version() -> str:
    import vllm

    return getattr(vllm, "__version__", "")
