"""Time-to-first-token: LLM (no knowledge) vs RAG (statements as prompt text) vs KVI (statements injected as KV).

    python bench/bench_ttft.py                      # ~100M-param Qwen2-family CPU model, capsules 8/32/128
    python bench/bench_ttft.py --model DIR          # a real model (local dir or hub name)

Writes bench/results/ttft.{json,csv} (machine, commit, rows) and prints the table.
"""
from __future__ import annotations

import argparse
import sys
import tempfile

import torch
from tqdm.auto import tqdm

from kvi_engine import compile_bank
from kvi_engine.models import bench_model, load_model
from kvi_engine.overhead import format_table, machine_info, measure_ttft, synthetic_capsules, write_results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF name or local dir (default: the ~100M random CPU bench model)")
    ap.add_argument("--capsules", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="bench/results/ttft")
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
    print(format_table(rows, ["method", "capsules", "batch", "knowledge_tokens", "ttft_ms", "ttft_ms_min",
                              "ratio_to_llm", "ratio_paired"]))
    write_results(rows, args.out, params=n_params, prompt_tokens=len(prompt), capsule_tokens=cap_tokens)
    print(f"wrote {args.out}.json / .csv ({machine_info()['commit']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
