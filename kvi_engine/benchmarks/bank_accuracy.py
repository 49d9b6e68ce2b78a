"""Accuracy of quantised banks vs fp16 on the four test model families: bytes per token (scales included) as a
ratio of fp16, relative error of the stored KV and of the attention output over the injected capsules, KL and top-1
agreement (95% Wilson interval) of the next-token distributions at every prompt position (sample capsules and
questions; each question asked ``--draws`` times with independent random sets of ``--per-prompt`` capsules), and
the noise floor: the same metrics for the fp16 bank with Gaussian noise of a given relative RMS on its keys/values.

    kvi bench bank-accuracy [--draws 8] [--noise 0.001,...] [--families llama,qwen2,mistral,qwen3]

Random weights at a trained-like scale (std 0.02). Bytes ratios depend on head_dim (int8: 0.5 + 1/D; int4: 0.25 +
2/G): head_dim 128 is a 7B model's. Writes bench/results/bank_accuracy_hd<D>.{json,csv} and a plot
of top-1 agreement against KV and attention error beside it (.png, if matplotlib is installed).
"""
import argparse
import time
from pathlib import Path

import torch

from kvi_engine.benchmarks import results as bench_results
from kvi_engine.capsules.capsule import load_capsules
from kvi_engine.eval.bank_accuracy import DEFAULT_NOISE, DEFAULT_SCHEMES, evaluate, format_table
from kvi_engine.eval.dataset import load_dataset
from kvi_engine.testing.tiny import tiny_model, tiny_tokenizer
from kvi_engine.utils.paths import sample_dir
from kvi_engine.utils.plotting import plot_or_skip, pyplot, save_png


def plot(results: list[dict], path: Path) -> None:
    plt = pyplot(str(path))
    fams = list(dict.fromkeys(r["family"] for r in results))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, err in zip(axes, ("kv_rel_err", "attn_rel_err")):
        for i, fam in enumerate(fams):
            rows = [r for r in results if r["family"] == fam and r[err] > 0]
            noise = sorted((r for r in rows if r["scheme"].startswith("noise@")), key=lambda r: r[err])
            color = f"C{i}"
            if noise:
                ax.plot([r[err] for r in noise], [100 * r["top1_agreement"] for r in noise], "-", color=color,
                        alpha=0.6, label=f"{fam}: Gaussian noise")
            for r in rows:
                if r["scheme"].startswith("noise@"):
                    continue
                lo, hi = r["top1_ci95"]
                y = 100 * r["top1_agreement"]
                ax.errorbar(r[err], y, yerr=[[y - 100 * lo], [100 * hi - y]], fmt="o", color=color, ms=4,
                            capsize=2)
                if i == 0:
                    ax.annotate(r["scheme"], (r[err], y), fontsize=7, xytext=(3, -9), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel({"kv_rel_err": "relative RMS error of the stored K/V",
                       "attn_rel_err": "relative error of the attention output over the bank"}[err])
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes:
        ax.axhline(99.5, color="k", ls=":", lw=1)
        ax.axhline(97, color="k", ls="--", lw=1)
    # Targets' byte budgets as bits per element (scales included); a Gaussian source needs >= -log2(err) bits.
    for ratio in (0.53, 0.28):
        bits = 16 * ratio
        axes[0].axvline(2 ** -bits, color="grey", lw=1)
        axes[0].annotate(f"R(D) floor at {ratio}x fp16 ({bits:.2f} bit)", (2 ** -bits, 0.02),
                         xycoords=("data", "axes fraction"), fontsize=7, rotation=90, xytext=(2, 0),
                         textcoords="offset points")
    axes[0].set_ylabel("top-1 agreement with fp16 (%)")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Quantised banks vs fp16: top-1 agreement against error (points: schemes, 95% Wilson CI; "
                 "lines: noise floor)", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="kvi bench bank-accuracy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default="llama,qwen2,mistral,qwen3")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--per-prompt", type=int, default=4)
    ap.add_argument("--draws", type=int, default=8, help="random capsule sets per question")
    ap.add_argument("--schemes", default=",".join(("bf16",) + DEFAULT_SCHEMES))
    ap.add_argument("--noise", default=",".join(map(str, DEFAULT_NOISE)),
                    help="relative RMS of the Gaussian noise-floor rows ('' for none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    caps = load_capsules(sample_dir() / "capsules.jsonl")
    prompts = [q.question for q in load_dataset(sample_dir() / "questions.jsonl")][:args.prompts]
    noise = [float(x) for x in args.noise.split(",") if x]
    tok = tiny_tokenizer(bos=True)
    results = []
    for fam in args.families.split(","):
        t0 = time.perf_counter()
        m = tiny_model(fam, tok, hidden=256, layers=2, heads=4, kv_heads=2, head_dim=args.head_dim)
        rows = evaluate(m, tok, caps, prompts, [s for s in args.schemes.split(",") if s],
                        capsules_per_prompt=args.per_prompt, draws=args.draws, noise=noise)
        print(format_table(rows, f"\n{fam}: head_dim {args.head_dim}, {len(prompts)} prompts x {args.draws} draws x "
                                 f"{args.per_prompt} capsules ({time.perf_counter() - t0:.0f} s)"), flush=True)
        results += [dict(r, family=fam, head_dim=args.head_dim) for r in rows]
    out = Path(args.out or bench_results.default_out(f"bank_accuracy_hd{args.head_dim}"))
    bench_results.write(out, "bank-accuracy", results, vars(args))
    plot_or_skip(plot, results, out.with_suffix(".png"))
    print(f"wrote {out}.json / .csv / .png")
    return 0
