"""Time-to-first-token: LLM (no knowledge) vs RAG (statements as prompt text) vs KVI (statements injected as KV).

    kvi bench ttft                          # ~100M-param Qwen2-family CPU model, capsules 8/32/128
    kvi bench ttft --model DIR              # a real model (local dir or hub name)

Work is built at the token level so the comparison is exact: RAG puts the very statement tokens KVI injects in
front of the prompt; LLM sees the prompt alone. TTFT = request in hand -> first token chosen: for KVI it includes
building the injection plan and gathering capsules from the bank, every time. Methods are timed round-robin. Two
ratios to LLM are reported: of each method's fastest repeat (the least disturbed by other load), and the median over
repeats of the paired ratio (a method's run over the LLM run of the same round, a few hundred ms apart), which is
robust to the machine's speed drifting during the measurement. Writes bench/results/ttft.{json,csv}.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from kvi_engine.bank.bank import KVBank
from kvi_engine.benchmarks import results
from kvi_engine.benchmarks.timing import paired_ratio, timed_interleaved
from kvi_engine.capsules.capsule import Capsule
from kvi_engine.compile.compiler import compile_bank
from kvi_engine.generate.inject import inject
from kvi_engine.models.loading import load_model
from kvi_engine.testing.tiny import bench_model

METHODS = ("llm", "rag", "kvi")
_PLACES = ["Kestrel Bay", "Tamsk", "Orrin Vale", "Saltmarsh", "Halden Ridge", "Corvo", "Ilmen", "Brightwater"]


def synthetic_capsules(n: int) -> list[Capsule]:
    """``n`` distinct short capsules (~14 tokens with the tiny bench tokenizer), deterministic."""
    rels = ["located_in", "produces", "works_for", "member_of"]
    return [Capsule(f"Station {i}", rels[i % len(rels)], _PLACES[(i * 7) % len(_PLACES)]) for i in range(n)]


@dataclass(slots=True)
class TTFTRow:
    method: str
    capsules: int
    batch: int
    prompt_tokens: int
    knowledge_tokens: int
    ttft_ms: float
    ttft_ms_min: float
    ratio_to_llm: float = float("nan")
    ratio_paired: float = float("nan")


def _first_token(model, ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, use_cache=True)
    return out.logits[:, -1].argmax(-1)


@torch.no_grad()
def measure_ttft(model, bank: KVBank, prompt_ids: list[int], capsule_ids: list[int], *, batch: int = 1,
                 repeats: int = 5, warmup: int = 1, methods=METHODS) -> list[TTFTRow]:
    device = next(model.parameters()).device
    prefix = bank.prefix_token_ids
    body = prompt_ids[len(prefix):] if prompt_ids[:len(prefix)] == prefix else list(prompt_ids)
    knowledge = [t for c in capsule_ids for t in bank.token_ids(c)]
    # One shared prefix (BOS) for every method: LLM [p, prompt], RAG [p, knowledge, prompt], KVI [prompt] with p
    # and the knowledge injected.
    prompt = torch.tensor([prefix + body] * batch, device=device)
    rag = torch.tensor([prefix + knowledge + body] * batch, device=device)
    kvi_prompt = torch.tensor([body] * batch, device=device)

    def kvi():
        with inject(model, bank, [capsule_ids] * batch, check=False):
            _first_token(model, kvi_prompt)

    runs = {"llm": lambda: _first_token(model, prompt), "rag": lambda: _first_token(model, rag), "kvi": kvi}
    times = timed_interleaved({m: runs[m] for m in methods}, repeats, warmup)
    rows = [TTFTRow(name, len(capsule_ids), batch, len(prompt_ids), 0 if name == "llm" else len(knowledge),
                    1e3 * statistics.median(t), 1e3 * min(t)) for name, t in times.items()]
    llm = next((r.ttft_ms_min for r in rows if r.method == "llm"), None)
    for r in rows:  # ratios of the minima: the least disturbed run of each method on a shared machine
        r.ratio_to_llm = r.ttft_ms_min / llm if llm else float("nan")
        if "llm" in times:
            r.ratio_paired = paired_ratio(times[r.method], times["llm"])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="kvi bench ttft", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF name or local dir (default: the ~100M random CPU bench model)")
    ap.add_argument("--capsules", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(results.default_out("ttft")))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        model, tok, _ = load_model(args.model, dtype=torch.float32, allow_fallback=False)
    else:
        model, tok = bench_model()
    n_params = sum(p.numel() for p in model.parameters())
    caps = synthetic_capsules(max(args.capsules))
    with tempfile.TemporaryDirectory() as d:
        bank = compile_bank(model, tok, caps, d, quant="fp32", batch_size=32)
        text = " ".join(f"Question {i}: which district holds station {i} of the survey?" for i in range(40))
        prompt = (bank.prefix_token_ids + tok(text, add_special_tokens=False).input_ids)[:args.prompt_tokens]
        rows = []
        grid = [(b, n) for b in args.batch for n in args.capsules]
        for b, n in tqdm(grid, desc="ttft"):
            rows += measure_ttft(model, bank, prompt, list(range(n)), batch=b, repeats=args.repeats)
        cap_tokens = bank.num_tokens / bank.num_capsules
    print(f"model: {type(model).__name__} {n_params / 1e6:.0f}M params, fp32, {torch.get_num_threads()} threads; "
          f"prompt {len(prompt)} tokens; capsules ~{cap_tokens:.1f} tokens")
    print(results.format_table(rows, ["method", "capsules", "batch", "knowledge_tokens", "ttft_ms", "ttft_ms_min",
                                      "ratio_to_llm", "ratio_paired"]))
    doc = results.write(args.out, "ttft", rows, vars(args), model_params=n_params, prompt_tokens=len(prompt),
                        capsule_tokens=cap_tokens)
    print(f"wrote {args.out}.json / .csv ({doc['commit'] or 'no commit'})")
    return 0
