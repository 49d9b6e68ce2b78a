"""Accuracy of quantised banks vs fp16 on the four test model families: bytes per token (scales included) as a
ratio of fp16, relative error of the attention output over the injected capsules, KL and top-1 agreement of the
next-token distributions at every prompt position (sample capsules and questions, 4 random capsules per question).

    python bench/bench_bank_accuracy.py [--prompts 32] [--head-dim 128] [--families llama,qwen2,mistral,qwen3]

Random weights at a trained-like scale (std 0.02). Bytes ratios depend on head_dim (int8: 0.5 + 1/D; int4: 0.25 +
2/G): head_dim 128 is a 7B model's. Writes bench/results/bank_accuracy_hd<D>.json with machine and git commit.
"""
import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from kvi_engine.bank_accuracy import DEFAULT_SCHEMES, evaluate, format_table
from kvi_engine.capsules import load_capsules
from kvi_engine.models import tiny_model, tiny_tokenizer

SAMPLE = Path(__file__).resolve().parents[1] / "kvi_engine" / "data" / "sample"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default="llama,qwen2,mistral,qwen3")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--per-prompt", type=int, default=4)
    ap.add_argument("--schemes", default=",".join(("bf16",) + DEFAULT_SCHEMES))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    caps = load_capsules(SAMPLE / "capsules.jsonl")
    prompts = [json.loads(x)["question"] for x in (SAMPLE / "questions.jsonl").read_text().splitlines()]
    prompts = prompts[:args.prompts]
    tok = tiny_tokenizer(bos=True)
    results = []
    for fam in args.families.split(","):
        t0 = time.perf_counter()
        m = tiny_model(fam, tok, hidden=256, layers=2, heads=4, kv_heads=2, head_dim=args.head_dim)
        rows = evaluate(m, tok, caps, prompts, args.schemes.split(","), capsules_per_prompt=args.per_prompt)
        print(format_table(rows, f"\n{fam}: head_dim {args.head_dim}, {len(prompts)} prompts x {args.per_prompt} "
                                 f"capsules ({time.perf_counter() - t0:.0f} s)"), flush=True)
        results += [dict(r, family=fam, head_dim=args.head_dim) for r in rows]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = Path(args.out or Path(__file__).parent / "results" / f"bank_accuracy_hd{args.head_dim}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "processor": platform.processor(),
                               "git_commit": commit, "torch": torch.__version__, "args": vars(args),
                               "rows": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
