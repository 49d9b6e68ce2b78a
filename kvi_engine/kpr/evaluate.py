"""Recall@k of dense retrievers on a retrieval set (exact inner-product search over L2-normalised vectors)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kvi_engine.benchmarks import results as bench_results
from kvi_engine.utils.plotting import plot_or_skip, pyplot, save_png

KS = (1, 5, 20)


def recall_at_k(query_vecs: np.ndarray, passage_vecs: np.ndarray, positives: list[list[int]],
                ks=KS) -> np.ndarray:
    """-> [num_queries, len(ks)] 0/1: is any positive among the top k passages."""
    kmax = min(max(ks), passage_vecs.shape[0])
    scores = query_vecs @ passage_vecs.T
    top = np.argpartition(-scores, kmax - 1, axis=1)[:, :kmax]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable"), 1)
    hits = np.zeros((len(positives), len(ks)), dtype=np.float64)
    for i, pos in enumerate(positives):
        ranks = [r for r, p in enumerate(top[i]) if p in set(pos)]
        first = ranks[0] if ranks else kmax
        hits[i] = [first < k for k in ks]
    return hits


def evaluate(encoders: dict, corpus: dict[str, str], queries: list[dict], ks=KS) -> dict:
    """``encoders``: name -> object with encode_queries/encode_passages. Returns
    {name: {subset: {"recall@k": float, "n": int}}} with subset "all" plus each query subset."""
    pids = list(corpus)
    index = {p: i for i, p in enumerate(pids)}
    positives = [[index[p] for p in q["positives"]] for q in queries]
    subsets = sorted({q["subset"] for q in queries})
    results = {}
    for name, enc in encoders.items():
        pv = enc.encode_passages([corpus[p] for p in pids], desc=f"{name}: passages")
        qv = enc.encode_queries([q["query"] for q in queries], desc=f"{name}: queries")
        hits = recall_at_k(qv, pv, positives, ks)
        results[name] = {}
        for subset in ["all", *subsets]:
            rows = [i for i, q in enumerate(queries) if subset == "all" or q["subset"] == subset]
            results[name][subset] = {f"recall@{k}": round(float(hits[rows, j].mean()), 4) for j, k in enumerate(ks)}
            results[name][subset]["n"] = len(rows)
    return results


def format_table(results: dict, ks=KS) -> str:
    lines = [f"{'retriever':<18} {'subset':<8} {'n':>5} " + " ".join(f"{'R@' + str(k):>7}" for k in ks)]
    for name, by_subset in results.items():
        for subset, r in by_subset.items():
            lines.append(f"{name:<18} {subset:<8} {r['n']:>5} " + " ".join(f"{100 * r[f'recall@{k}']:>6.1f}%"
                                                                          for k in ks))
    return "\n".join(lines)


def write_report(results: dict, out_prefix: str | os.PathLike, meta: dict | None = None, ks=KS) -> list[Path]:
    """``<prefix>.json`` / ``.csv`` in the benchmark result schema (a row per retriever and subset; the nested
    ``results`` beside them) and ``<prefix>.png`` (grouped bars: recall@k per retriever and subset; skipped with a
    warning without matplotlib)."""
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    jpath, ppath = out_prefix.with_suffix(".json"), out_prefix.with_suffix(".png")
    rows = [{"retriever": name, "subset": subset, **r} for name, by_subset in results.items()
            for subset, r in by_subset.items()]
    bench_results.write(out_prefix, "kpr-eval", rows, meta or {}, results=results)
    paths = [jpath, out_prefix.with_suffix(".csv")]
    if plot_or_skip(_plot, results, ppath, ks):
        paths.append(ppath)
    return paths


def _plot(results: dict, path: Path, ks) -> None:
    plt = pyplot(str(path))
    subsets = list(next(iter(results.values())))
    fig, axes = plt.subplots(1, len(subsets), figsize=(4.2 * len(subsets), 3.6), sharey=True)
    axes = np.atleast_1d(axes)
    width = 0.8 / len(results)
    for ax, subset in zip(axes, subsets):
        for j, (name, by_subset) in enumerate(results.items()):
            vals = [100 * by_subset[subset][f"recall@{k}"] for k in ks]
            bars = ax.bar(np.arange(len(ks)) + j * width, vals, width, label=name)
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks(np.arange(len(ks)) + width * (len(results) - 1) / 2, [f"R@{k}" for k in ks])
        ax.set_title(f"{subset} (n={next(iter(results.values()))[subset]['n']})")
        ax.set_ylim(0, 105)
    axes[0].set_ylabel("recall (%)")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle("KPR vs base encoder: held-out entities")
    fig.tight_layout()
    save_png(fig, path)
