"""Evaluation report: per-method EM / token F1 / relaxed match with 95% bootstrap CIs, paired permutation tests
against a reference method (KVI in ``kvi eval``), a per-hop breakdown, and Markdown / CSV / JSON / PNG outputs.

Every method must answer exactly the dataset's questions, in order; the SHA-256 of the inputs each method saw is
recorded so a reader can check that all methods ran on identical inputs.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from kvi_engine.eval.dataset import QAItem
from kvi_engine.eval.metrics import METRICS, score
from kvi_engine.eval.stats import bootstrap_ci, paired_permutation_test
from kvi_engine.utils.atomic import atomic_open
from kvi_engine.utils.plotting import plot_or_skip, pyplot, save_png

REPORT_VERSION = 2  # 2: "methods" is an object keyed by method name, with the support metrics


@dataclass(slots=True)
class MethodResult:
    method: str
    n: int
    metrics: dict[str, dict[str, float]]  # metric -> {"mean", "ci_low", "ci_high", "p_vs_reference"}
    by_hops: dict[str, dict[str, float]]  # "1" / "2" / ... -> metric -> mean
    inputs_sha256: str


@dataclass(slots=True)
class EvalReport:
    dataset: str
    reference: str | None
    methods: list[MethodResult]
    items: list[dict] = field(default_factory=list)  # id, question, answers, hops, method -> prediction + scores
    config: dict = field(default_factory=dict)
    version: int = REPORT_VERSION
    support: dict = field(default_factory=dict)  # eval.support.support_report(...), when the dataset has gold

    def to_dict(self) -> dict:
        """``{"methods": {name: {n, metrics, by_hops, inputs_sha256, support_recall, support_all, doc_recall,
        support_by_type}}, ...}`` (support keys when the dataset has gold evidence)."""
        d = asdict(self)
        support = d.pop("support").get("methods", {})
        methods = {}
        for r in d.pop("methods"):
            name = r.pop("method")
            sup = dict(support.get(name, {}))
            extra = {k: sup[k] for k in ("support_recall", "support_all", "doc_recall") if k in sup}
            if sup:
                extra["support_by_type"] = sup.get("by_type", {})
            methods[name] = {**r, **extra}
        return {**d, "methods": methods, "support_questions": self.support.get("questions", 0)}


def _digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()


def evaluate(dataset: Sequence[QAItem], predictions: Mapping[str, Sequence[str]], *, reference: str | None = None,
             inputs: Mapping[str, Sequence[str]] | None = None, dataset_name: str = "", confidence: float = 0.95,
             n_resamples: int = 10_000, seed: int = 0, config: Mapping | None = None) -> EvalReport:
    """Score ``predictions[method][i]`` against ``dataset[i]``. ``inputs[method]`` (optional) is what each method was
    given per item (e.g. the question, or the full prompt minus retrieved evidence); it must match across methods."""
    if not predictions:
        raise ValueError("no methods to evaluate")
    n = len(dataset)
    for m, preds in predictions.items():
        if len(preds) != n:
            raise ValueError(f"method {m!r} has {len(preds)} predictions for {n} questions")
        if not all(isinstance(p, str) for p in preds):
            raise ValueError(f"method {m!r}: predictions must be strings")
    if reference is not None and reference not in predictions:
        raise ValueError(f"reference method {reference!r} not among {sorted(predictions)}")
    questions = [it.question for it in dataset]
    seen = {m: list(inputs[m]) if inputs and m in inputs else questions for m in predictions}
    digests = {m: _digest(v) for m, v in seen.items()}
    if len(set(digests.values())) > 1:
        raise ValueError(f"methods saw different inputs: {digests}")

    scores = {m: [score(p, it.answers) for p, it in zip(preds, dataset)] for m, preds in predictions.items()}
    results = []
    for m in predictions:
        metrics = {}
        for name in METRICS:
            vals = [s[name] for s in scores[m]]
            mean, lo, hi = bootstrap_ci(vals, confidence, n_resamples, seed)
            p = None
            if reference is not None and m != reference:
                p = paired_permutation_test(vals, [s[name] for s in scores[reference]], n_resamples, seed)
            metrics[name] = {"mean": mean, "ci_low": lo, "ci_high": hi, "p_vs_reference": p}
        by_hops: dict[str, dict[str, float]] = {}
        for h in sorted({it.hops for it in dataset if it.hops is not None}):
            rows = [s for s, it in zip(scores[m], dataset) if it.hops == h]
            by_hops[str(h)] = {name: sum(r[name] for r in rows) / len(rows) for name in METRICS}
        results.append(MethodResult(m, n, metrics, by_hops, digests[m]))
    items = [{"id": it.id, "question": it.question, "answers": list(it.answers), "hops": it.hops,
              **{m: {"prediction": predictions[m][i], **scores[m][i]} for m in predictions}}
             for i, it in enumerate(dataset)]
    cfg = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed, **(config or {})}
    return EvalReport(dataset_name, reference, results, items, cfg)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def to_markdown(report: EvalReport) -> str:
    conf = int(round(100 * report.config.get("confidence", 0.95)))
    ref = report.reference
    lines = [f"# Evaluation: {report.dataset or 'dataset'} ({report.methods[0].n} questions)", "",
             f"Scores in %, [{conf}% bootstrap CI]" + (f"; p: paired permutation test against {ref}." if ref else "."),
             "", "| method | EM | F1 | relaxed |" + (" p (EM) | p (F1) |" if ref else ""),
             "|---|---|---|---|" + ("---|---|" if ref else "")]
    for r in report.methods:
        cells = [f"{_pct(r.metrics[k]['mean'])} [{_pct(r.metrics[k]['ci_low'])}, {_pct(r.metrics[k]['ci_high'])}]"
                 for k in ("em", "f1", "relaxed")]
        if ref:
            cells += ["—" if r.method == ref else f"{r.metrics[k]['p_vs_reference']:.3g}" for k in ("em", "f1")]
        lines.append(f"| {r.method} | " + " | ".join(cells) + " |")
    hops = sorted({h for r in report.methods for h in r.by_hops}, key=int)
    if hops:
        lines += ["", "By number of hops (EM / relaxed, %):", "",
                  "| method | " + " | ".join(f"{h}-hop" for h in hops) + " |", "|---|" + "---|" * len(hops)]
        for r in report.methods:
            lines.append(f"| {r.method} | " + " | ".join(
                f"{_pct(r.by_hops[h]['em'])} / {_pct(r.by_hops[h]['relaxed'])}" if h in r.by_hops else "—"
                for h in hops) + " |")
    lines += ["", f"Inputs SHA-256 (identical for every method): `{report.methods[0].inputs_sha256[:16]}…`", ""]
    return "\n".join(lines)


def to_csv(report: EvalReport) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "metric", "mean", "ci_low", "ci_high", "p_vs_reference", "n"])
    for r in report.methods:
        for k, v in r.metrics.items():
            p = "" if v["p_vs_reference"] is None else f"{v['p_vs_reference']:.6g}"
            w.writerow([r.method, k, f"{v['mean']:.6f}", f"{v['ci_low']:.6f}", f"{v['ci_high']:.6f}", p, r.n])
    return buf.getvalue()


def plot(report: EvalReport, path: str | os.PathLike) -> None:
    import numpy as np

    plt = pyplot(f"{path}")

    names = [r.method for r in report.methods]
    keys = ("em", "f1", "relaxed")
    x = np.arange(len(names))
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(names) + 2), 3.6), dpi=120)
    for j, k in enumerate(keys):
        means = np.array([r.metrics[k]["mean"] for r in report.methods]) * 100
        err = np.array([[r.metrics[k]["mean"] - r.metrics[k]["ci_low"], r.metrics[k]["ci_high"] - r.metrics[k]["mean"]]
                        for r in report.methods]).T * 100
        ax.bar(x + (j - (len(keys) - 1) / 2) * width, means, width, yerr=err, capsize=2, label=k.upper())
    ax.set_xticks(x, names)
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 115)
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(f"{report.dataset or 'evaluation'} (n={report.methods[0].n}, 95% CI)")
    ax.legend(ncol=len(keys), fontsize=8, loc="upper left")
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def write_report(report: EvalReport, out_dir: str | os.PathLike, stem: str = "report") -> dict[str, Path]:
    """Write ``<stem>.md``, ``<stem>.csv``, ``<stem>.json`` (everything, per item included) and ``<stem>.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{stem}.{ext}" for ext in ("md", "csv", "json", "png")}
    with atomic_open(paths["md"], "w") as f:
        f.write(to_markdown(report))
    with atomic_open(paths["csv"], "w") as f:
        f.write(to_csv(report))
    with atomic_open(paths["json"], "w") as f:
        json.dump(report.to_dict(), f, ensure_ascii=False, indent=1)
    if not plot_or_skip(plot, report, paths["png"]):
        del paths["png"]
    return paths
