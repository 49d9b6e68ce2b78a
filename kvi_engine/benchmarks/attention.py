"""Fused prefix attention vs the unfused reference path, per bank format, batch and injected length.

    kvi bench attention                       # CPU: C++ kernel vs reference (bench model geometry)
    kvi bench attention --device cuda         # GPU: Triton kernel vs reference (Llama-3-8B geometry)
    TRITON_INTERPRET=1 kvi bench attention --backend triton --batch 1 --tokens 32 --repeats 1
                                                          # smoke test of the GPU path on a CPU (timings meaningless)
    kvi bench attention --compile-only 90     # compile the Triton kernel for sm_90 without a GPU

One attention layer is timed, as one layer of a forward pass runs it:
- ``reference``      the unfused path at a layer's first use, in PyTorch: gather the plan's tokens from the bank,
                     dequantise, rotate, concatenate with the row's own KV, SDPA (backend ``sdpa``; what an unfused
                     prefill pays per layer);
- ``gather_sdpa``    (CPU) the same with the gather, dequantisation and rotation done by one C++ pass (op
                     ``slot_gather``; what the engine's unfused path does at a decode step's first use);
- ``reference_warm`` the same with the gathered KV already cached by the plan (later decode steps; the cache holds a
                     dequantised copy of every injected token of every layer for the plan's life);
- ``cpp`` / ``triton`` the fused kernel reading the bank in its storage format (plan tables built once per batch).
Backends are timed round-robin (load from other processes hits all alike); the fastest repeat is reported, in wall
time or, with ``--clock cpu`` (use with ``--threads 1``), in process CPU time: the op's cost on one core, which
other load on a shared machine barely disturbs.
GB/s counts the bytes the op must read (bank codes + scales of the injected tokens, own KV, queries) and write.
Writes bench/results/attention_<device>.{csv,json}.
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import torch

from kvi_engine.attention import op as attention
from kvi_engine.attention.reference import causal_mask
from kvi_engine.benchmarks import results
from kvi_engine.benchmarks.ttft import synthetic_capsules
from kvi_engine.compile.compiler import compile_bank
from kvi_engine.plan.plan import build_plan
from kvi_engine.testing.tiny import tiny_model, tiny_tokenizer
from kvi_engine.utils.machine import machine_info

GEOMETRY = {"cpu": dict(hidden=768, heads=12, kv_heads=4), "cuda": dict(hidden=4096, heads=32, kv_heads=8)}


def bank_for(scheme: str, geometry: dict, num_capsules: int, root: str, device: str):
    tok = tiny_tokenizer(vocab_size=8192)
    model = tiny_model("qwen2", tok, layers=1, intermediate=1024, **geometry).to(device)
    return model, compile_bank(model, tok, synthetic_capsules(num_capsules), f"{root}/{scheme}", quant=scheme,
                               progress=False)


def capsule_rows(bank, batch: int, tokens: int) -> list[list[int]]:
    """``batch`` rows of distinct capsules holding at least ``tokens`` injected tokens each, spread over the bank
    (a stride of 11 from a per-row start, so rows differ and overlap)."""
    lengths = bank.ranges[:, 1].tolist()
    n = bank.num_capsules
    if sum(lengths) < tokens:
        raise ValueError(f"a row of {tokens} injected tokens needs a bank of at least that many; this one holds "
                         f"{sum(lengths)} in {n} capsules")
    stride = 11 if math.gcd(11, n) == 1 else 1  # a stride coprime to n visits every capsule
    rows = []
    for r in range(batch):
        row, total = [], 0
        for j in range(n):
            if total >= tokens:
                break
            c = (r * 37 + j * stride) % n
            row.append(c)
            total += lengths[c]
        rows.append(row)
    return rows


def timed(runs: dict, repeats: int, clock) -> dict[str, float]:
    """Fastest of ``repeats`` round-robin runs (after one warm-up each)."""
    for fn in runs.values():
        fn()
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = clock()
            fn()
            best[name] = min(best[name], clock() - t0)
    return best


def hbm_bandwidth(device: str) -> float | None:
    if device != "cuda":
        return None
    x = torch.empty(512 * 2 ** 20, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        y.copy_(x)
    torch.cuda.synchronize()
    return 2 * x.numel() * 20 / (time.perf_counter() - t0) / 1e9


def compile_only(arch: int) -> None:
    """Compile the Triton kernel to a cubin for CUDA ``arch`` (no GPU needed): every bank format and activation
    dtype, with and without an explicit mask, at head_dim 128; prints shared memory per configuration."""
    import inspect

    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kvi_engine.kernels.prefix_attention import _FORMATS, _prefix_attn_kernel

    act_types = {"fp32": tl.float32, "fp16": tl.float16, "bf16": tl.bfloat16}
    code_types = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16", "int8": "*i8"}
    for scheme, fmt in _FORMATS.items():
        for act, has_mask in (("bf16", False), ("fp16", True), ("fp32", False)):
            a = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}[act]
            ptrs = dict(Q=a, OWN_K=a, OWN_V=a, OWN_MASK="*u8", BANK_K=code_types.get(scheme, "*u8"),
                        BANK_V=code_types.get(scheme, "*u8"), K_SCALE="*fp16", K_ZERO="*fp16", V_SCALE="*fp16",
                        V_ZERO="*fp16", PRE_K="*fp16", PRE_V="*fp16", TOKEN="*i32", POS="*i32", VIS="*u8",
                        CROW="*i32", INV_FREQ="*fp32", OUT=a, LSE="*fp32")
            const = dict(HAS_MASK=has_mask, HALF=64, BLOCK_H=64, BLOCK_M=64, BLOCK_N=64, ACT=act_types[act],
                         DOT=act_types[act], PRECISION="ieee" if act == "fp32" else "tf32", FMT=fmt, GROUP_K=128,
                         GROUP_V=128, K_PER_CAPSULE=False)
            sig = {n: ptrs.get(n) or ("constexpr" if n in const else "fp32" if n in ("scale", "rope_scale") else "i32")
                   for n in inspect.signature(_prefix_attn_kernel.fn).parameters}
            k = triton.compile(ASTSource(_prefix_attn_kernel, sig, const), target=GPUTarget("cuda", arch, 32))
            print(f"sm_{arch} {scheme:5} act={act} mask={has_mask}: ok, shared {k.metadata.shared} B", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="kvi bench attention", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--schemes", nargs="+", default=["fp16", "int8", "int4"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--tokens", type=int, nargs="+", default=None, help="injected tokens per row")
    ap.add_argument("--modes", nargs="+", default=["prefill", "decode"])
    ap.add_argument("--prompt", type=int, default=32, help="own tokens per row (prefill queries)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backend", choices=["cpp", "triton"], default=None,
                    help="fused backend (default: cpp on cpu, triton on cuda)")
    ap.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None,
                    help="activations (default: fp32 on cpu, bf16 on cuda)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (the C++ kernel uses as many)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--compile-only", type=int, metavar="ARCH", help="compile the Triton kernel for sm_ARCH and exit")
    args = ap.parse_args(argv)
    if args.compile_only:
        compile_only(args.compile_only)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    fused = args.backend or ("cpp" if dev == "cpu" else "triton")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[
        args.dtype or ("fp32" if dev == "cpu" else "bf16")]
    tokens = args.tokens or ([128, 512, 2048] if dev == "cpu" else [128, 512, 1024, 2048])
    geometry = GEOMETRY[dev]
    Hq, Hkv, D = geometry["heads"], geometry["kv_heads"], geometry["hidden"] // geometry["heads"]
    machine = machine_info()
    device_name = machine["gpu"] if dev == "cuda" else machine["cpu"]
    hbm = hbm_bandwidth(dev)
    rows = []
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as root, torch.no_grad():
        for scheme in args.schemes:
            model, bank = bank_for(scheme, geometry, 2 * max(tokens) // 10, root, dev)
            bytes_per_token = bank.bytes_per_token  # one layer: codes + scales of K and V
            for batch in args.batch:
                for n in tokens:
                    plan = build_plan(bank, capsule_rows(bank, batch, n))
                    injected = int(plan.valid.sum()) / batch
                    for mode in args.modes:
                        Q, KV = (args.prompt, args.prompt) if mode == "prefill" else (1, args.prompt + 1)
                        g = torch.Generator(device=dev).manual_seed(0)
                        q = torch.randn(batch, Hq, Q, D, generator=g, device=dev).to(dtype)
                        k = torch.randn(batch, Hkv, KV, D, generator=g, device=dev).to(dtype)
                        v = torch.randn(batch, Hkv, KV, D, generator=g, device=dev).to(dtype)
                        mask = causal_mask(Q, KV, batch, dev)

                        def cold(gather="reference"):
                            # the per-layer gathered KV is dropped; plan-wide tables stay
                            plan.forget(lambda key: isinstance(key[0], int))
                            os.environ["KVI_BACKEND_SLOT_GATHER"] = gather
                            try:
                                attention.prefix_attention(q, k, v, mask, plan, 0, model, backend="sdpa")
                            finally:
                                del os.environ["KVI_BACKEND_SLOT_GATHER"]
                            sync()

                        def warm():
                            attention.prefix_attention(q, k, v, mask, plan, 0, model, backend="sdpa")
                            sync()

                        def kernel():
                            attention.prefix_attention(q, k, v, mask, plan, 0, model, backend=fused)
                            sync()

                        runs = {"reference": cold, "reference_warm": warm, fused: kernel}
                        if dev == "cpu":  # the engine's own unfused path: the C++ slot gather, then SDPA
                            runs["gather_sdpa"] = lambda: cold("cpp")
                        best = timed(runs, args.repeats, time.process_time if args.clock == "cpu" else time.perf_counter)
                        moved = (batch * (injected * bytes_per_token + 2 * Hkv * KV * D * k.element_size())
                                 + 2 * q.numel() * q.element_size() + mask.numel())
                        for name, t in best.items():
                            gbps = moved / t / 1e9
                            rows.append(dict(device=device_name, scheme=scheme,
                                             batch=batch, injected_tokens=round(injected), q_len=Q, kv_len=KV,
                                             q_heads=Hq, kv_heads=Hkv, head_dim=D, dtype=str(dtype)[6:], mode=mode,
                                             backend=name, clock=args.clock, threads=torch.get_num_threads(),
                                             ms=round(t * 1e3, 3), gbps=round(gbps, 2),
                                             hbm_fraction=round(gbps / hbm, 3) if hbm else "",
                                             speedup_vs_reference=round(best["reference"] / t, 2),
                                             speedup_vs_warm=round(best["reference_warm"] / t, 2)))
                        r = next(x for x in rows[-len(runs):] if x["backend"] == fused)
                        print(f"{scheme:5} B={batch:3} inj={r['injected_tokens']:5} {mode:7} "
                              + "  ".join(f"{n}={best[n] * 1e3:9.2f}ms" for n in runs)
                              + f"  {fused} x{r['speedup_vs_reference']:.2f} vs reference, "
                                f"x{r['speedup_vs_warm']:.2f} vs warm"
                              + f"  {r['gbps']:.1f} GB/s", flush=True)
    results.write(args.out or results.default_out(f"attention_{dev}"), "attention", rows, vars(args), hbm_gbps=hbm,
                  geometry=geometry)
    return 0
