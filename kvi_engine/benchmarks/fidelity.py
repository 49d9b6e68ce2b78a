"""Knowledge fidelity: is knowledge injected as compiled KV used as well as the same knowledge given as text?

    kvi bench fidelity [--model reader] [--n 64] [--ns 1,4,16,64] [--hops 1,2] [--methods llm,rag,...]

Held-out questions from the reader's generator (entities of the test split: never seen in training), each with a
context of N facts (1 or 2 relevant -- 2-hop questions need two chained facts -- the rest distractors about other
random entities), N in 1/4/16/64 (2-hop: at least 2). Every method gets the same question, the same facts in the
same order, the same prompt template (:func:`kvi_engine.query.prompts.qa_prompt`), the same greedy decoding
(``--max-new-tokens``, stop at EOS) and the same post-processing (:mod:`kvi_engine.eval.metrics`); they differ in the
knowledge channel only:

  llm           no facts
  rag           the facts as "- fact" lines of the prompt text
  kv-prefix     the facts as ONE capsule (compiled together, full causal attention among them -- a prompt/prefix
                cache of the context text) injected as KV; no prompt text
  kvi           one capsule per fact (each compiled alone), stacked layout (KVI's default); no prompt text
  kvi-parallel  one capsule per fact, every capsule at positions 0..len-1 (APE-style parallel encoding)
  kvi-dual      kvi + the facts as prompt text (the dual channel)

EM and token F1 per (method, N, hops) with 95% percentile-bootstrap intervals; TTFT (median over batches of the
engine's time to first token per question) beside accuracy. Attribution (KVI stacked): the share of questions whose
answer puts its largest attention mass (mean over generated tokens, layers and heads; ``kvi serve``'s measure) on a
relevant capsule. Every method is also compared with RAG question by question (``paired`` in the JSON: EM
difference with a paired bootstrap CI, ratio of correct answers, permutation p-value; pooled, per hop count and
per cell), and EM is split by question direction (``by_direction``: forward questions ask a fact's object, inverse
ones its subject). Writes bench/results/fidelity_<model>.{json,csv,png}.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kvi_engine.reader.generator import direction

METHODS = ("llm", "rag", "kv-prefix", "kvi", "kvi-parallel", "kvi-dual")
_CTX_RELATION = "__context__"  # the kv-prefix capsule: its "statement" is the whole context text


def build_items(n_per: int, ns=(1, 4, 16, 64), hops=(1, 2), seed: int = 2024) -> list[dict]:
    """``n_per`` held-out questions per (N, hops): dicts with facts, triples, question, answer, support."""
    from kvi_engine.reader.generator import Generator

    g = Generator(seed=seed, split="test")
    items = []
    for hop in hops:
        for n in ns:
            nn = max(n, 2) if hop == 2 else n
            for _ in range(n_per):
                c = g.context(nn, 1, hops=(hop,))
                q = c.questions[0]
                items.append({"cond": f"n{nn}/h{hop}", "n": nn, "hops": hop, "facts": list(c.facts),
                              "triples": [list(t) for t in c.triples], "question": q.question, "answer": q.answer,
                              "support": list(q.support),
                              "direction": direction(c.triples, q.support, q.answer)})
    return items


def by_direction(items, runs) -> list[dict]:
    """EM per method, cell and question direction (items of older runs, stored without one, get it from their
    triples)."""
    from kvi_engine.eval.metrics import exact_match

    dirs = [it.get("direction") or direction(it["triples"], it["support"], it["answer"]) for it in items]
    out = []
    for m, r in runs.items():
        for cond in dict.fromkeys(it["cond"] for it in items):
            for d in ("fwd", "inv"):
                idx = [i for i, it in enumerate(items) if it["cond"] == cond and dirs[i] == d]
                if not idx:
                    continue
                cell = {"capsules": items[idx[0]]["n"], "hops": items[idx[0]]["hops"], "direction": d,
                        "questions": len(idx)}
                ok = int(sum(exact_match(r["preds"][i], [items[i]["answer"]]) for i in idx))
                out.append({"method": m, **cell, "correct": ok, "em": ok / len(idx)})
                if "top_capsule" in r:  # attribution: the largest mass on a relevant capsule (the "em" field)
                    hit = sum(r["top_capsule"][i] in items[i]["support"] for i in idx)
                    out.append({"method": f"{m} attribution", **cell, "correct": hit, "em": hit / len(idx)})
    return out


def format_by_direction(rows: list[dict]) -> str:
    """One line per (method, hops, direction): EM per capsule count, as correct/questions."""
    from kvi_engine.benchmarks.results import format_table
    lines: dict = {}
    for r in rows:
        key = (r["method"], r["hops"], r["direction"])
        lines.setdefault(key, {"method": r["method"], "hops": r["hops"], "direction": r["direction"]})
        lines[key][f"{r['capsules']} caps"] = f"{100 * r['em']:.1f} ({r['correct']}/{r['questions']})"
    caps = sorted({r["capsules"] for r in rows})
    cols = ["method", "hops", "direction"] + [f"{n} caps" for n in caps]
    return format_table([{c: row.get(c, "") for c in cols} for row in lines.values()], cols)


def _batches(costs: list[int], max_tokens: int, max_rows: int = 64):
    order = sorted(range(len(costs)), key=lambda i: costs[i])
    b, t = [], 0
    for i in order:
        if b and (t + costs[i] > max_tokens or len(b) >= max_rows):
            yield b
            b, t = [], 0
        b.append(i)
        t += costs[i]
    if b:
        yield b


def _run(engine, prompts, capsule_ids, costs, groups, max_new_tokens, max_tokens):
    """Greedy answers; batches never mix conditions (``groups``), so each item's TTFT share (batch TTFT / rows) is
    that of a batch of its own condition."""
    out, ttft = [None] * len(prompts), [0.0] * len(prompts)
    for grp in dict.fromkeys(groups):
        members = [i for i, g in enumerate(groups) if g == grp]
        for bb in _batches([costs[i] for i in members], max_tokens):
            b = [members[j] for j in bb]
            g = engine.generate([prompts[i] for i in b], None if capsule_ids is None else [capsule_ids[i] for i in b],
                                max_new_tokens=max_new_tokens)
            for i, t in zip(b, g.texts):
                out[i], ttft[i] = t.strip(), g.ttft_s / len(b)
    return out, ttft


@torch.no_grad()
def run_methods(model, tok, items, methods=METHODS, *, max_new_tokens: int = 16, max_tokens: int = 8000,
                quant: str = "fp32", templates=None, attribution: bool = True) -> dict:
    """{method: {"preds": [...], "ttft_s": [...] (per item), "wall_s": s}} -- every method on the same items; for
    ``kvi`` (with ``attribution``) also ``top_capsule``: per item the capsule the answer attended to most."""
    from kvi_engine.capsules.capsule import Capsule
    from kvi_engine.compile.compiler import compile_bank
    from kvi_engine.generate.engine import KVIEngine
    from kvi_engine.query.prompts import qa_prompt
    from kvi_engine.reader.schema import ALL_TEMPLATES

    templates = {**ALL_TEMPLATES, **(templates or {}), _CTX_RELATION: "{subject}"}
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown fidelity method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    res: dict = {}
    with tempfile.TemporaryDirectory() as work:
        banks = {}
        if any(m.startswith("kvi") for m in methods):
            caps, ids = [], []
            for it in items:
                ids.append(list(range(len(caps), len(caps) + len(it["triples"]))))
                caps += [Capsule(s, r, o) for s, r, o in it["triples"]]
            bank = compile_bank(model, tok, caps, Path(work) / "facts", quant=quant, templates=templates,
                                progress=False, batch_size=64)
            for it, row in zip(items, ids):  # the bank holds exactly the statements RAG shows as text
                for f, c in zip(it["facts"], row):
                    if tok.decode(bank.token_ids(c)).strip() != f:
                        raise AssertionError(f"capsule {c} decodes to {tok.decode(bank.token_ids(c))!r}, not {f!r}")
            banks["facts"] = (bank, ids)
        if "kv-prefix" in methods:
            caps = [Capsule(" ".join(it["facts"]), _CTX_RELATION, "-") for it in items]
            bank = compile_bank(model, tok, caps, Path(work) / "ctx", quant=quant, templates=templates,
                                progress=False, batch_size=16)
            banks["ctx"] = (bank, [[i] for i in range(len(items))])
        for m in methods:
            t0 = time.perf_counter()
            with_text = m in ("rag", "kvi-dual")
            prompts = [qa_prompt(it["question"], it["facts"] if with_text else ()) for it in items]
            plen = [len(tok(p).input_ids) + max_new_tokens for p in prompts]
            if m in ("llm", "rag"):
                engine, cids, costs = KVIEngine(model, tok, None), None, plen
            else:
                bank, cids = banks["ctx" if m == "kv-prefix" else "facts"]
                engine = KVIEngine(model, tok, bank, layout="parallel" if m == "kvi-parallel" else "stacked")
                costs = [p + sum(len(bank.token_ids(c)) for c in row) for p, row in zip(plen, cids)]
            preds, ttft = _run(engine, prompts, cids, costs, [it["cond"] for it in items], max_new_tokens,
                               max_tokens)
            res[m] = {"preds": preds, "ttft_s": ttft, "wall_s": time.perf_counter() - t0}
            if m == "kvi" and attribution:
                res[m]["top_capsule"] = top_capsules(engine, prompts, cids, costs, max_new_tokens, max_tokens)
    return res


class _Masses:
    """``on_attention`` hook: per forward, the mass each row's choosing query puts on each injected segment, mean
    over heads and layers (:mod:`kvi_engine.serve.attribution`)."""

    def __init__(self, num_layers: int):
        self.num_layers, self.steps, self._sum = num_layers, [], None

    def __call__(self, layer, plan, capsule_lse, lse):
        mass = torch.exp(capsule_lse[:, :, -1] - lse[:, :, -1:]).nan_to_num_(0.0).mean(1).float().cpu()
        self._sum = mass if self._sum is None else self._sum + mass
        if layer == self.num_layers - 1:
            self.steps.append(self._sum / self.num_layers)
            self._sum = None


def top_capsules(engine, prompts, capsule_ids, costs, max_new_tokens, max_tokens) -> list[int]:
    """Per item, the plan position of the capsule with the largest attention mass over the generated answer
    (tokens up to EOS; the EOS-choosing step included), greedy decoding as in the accuracy run: which fact the
    answer used, by the serving API's attribution measure."""
    from kvi_engine.generate.inject import attach
    from kvi_engine.plan.plan import build_plan

    model, out = engine.model, [None] * len(prompts)
    eos = model.generation_config.eos_token_id
    stops = set(eos if isinstance(eos, list) else [eos]) | {engine.tokenizer.pad_token_id}
    for b in _batches(costs, max_tokens):
        ids, mask = engine.encode([prompts[i] for i in b], strip_prefix=True)
        plan = build_plan(engine.bank, [capsule_ids[i] for i in b], layout=engine.layout)
        hook = _Masses(model.config.num_hidden_layers)
        with attach(model, plan, on_attention=hook):
            gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=engine.tokenizer.pad_token_id)
        steps = torch.stack(hook.steps)  # [steps, rows, 1 + capsules]
        for r, i in enumerate(b):
            row = gen[r, ids.shape[1]:].tolist()
            n = next((t + 1 for t, x in enumerate(row) if x in stops), len(row))
            caps = steps[:n, r, 1:1 + len(capsule_ids[i])].mean(0)
            out[i] = int(caps.argmax())
    return out


def score_rows(items, runs) -> list[dict]:
    from kvi_engine.eval.metrics import exact_match, token_f1
    from kvi_engine.eval.stats import bootstrap_ci

    rows = []
    for m, r in runs.items():
        for cond in dict.fromkeys(it["cond"] for it in items):
            idx = [i for i, it in enumerate(items) if it["cond"] == cond]
            em = [exact_match(r["preds"][i], [items[i]["answer"]]) for i in idx]
            f1 = [token_f1(r["preds"][i], [items[i]["answer"]]) for i in idx]
            e, elo, ehi = bootstrap_ci(em)
            f, flo, fhi = bootstrap_ci(f1)
            row = {"method": m, "capsules": items[idx[0]]["n"], "hops": items[idx[0]]["hops"],
                   "questions": len(idx), "em": e, "em_ci95": [elo, ehi], "f1": f, "f1_ci95": [flo, fhi],
                   "ttft_ms_per_question": 1000 * statistics.median(r["ttft_s"][i] for i in idx)}
            if "top_capsule" in r:  # the capsule with the largest mass is a relevant one (a support fact)
                hit = [r["top_capsule"][i] in items[i]["support"] for i in idx]
                a, alo, ahi = bootstrap_ci(hit)
                right = [h for h, e in zip(hit, em) if e]  # among the questions answered correctly
                row.update(attribution_top1=a, attribution_top1_ci95=[alo, ahi],
                           attribution_top1_correct=sum(right) / len(right) if right else float("nan"))
            rows.append(row)
    return rows


def paired_vs(items, runs, base: str = "rag") -> list[dict]:
    """Every method against ``base`` on the same questions: mean per-question EM difference (points) with a 95%
    bootstrap CI of the paired differences, the ratio of correct answers, and a paired permutation p-value -- over
    all questions, per hop count, and per (capsules, hops) cell. Per cell, 64 questions resolve only large gaps."""
    from kvi_engine.eval.metrics import exact_match
    from kvi_engine.eval.stats import bootstrap_ci, paired_permutation_test

    if base not in runs:
        return []
    em = {m: [exact_match(r["preds"][i], [it["answer"]]) for i, it in enumerate(items)] for m, r in runs.items()}
    groups = [("all", list(range(len(items))))]
    groups += [(f"h{h}", [i for i, it in enumerate(items) if it["hops"] == h])
               for h in sorted({it["hops"] for it in items})]
    conds = dict.fromkeys(it["cond"] for it in items)
    groups += [(c, [i for i, it in enumerate(items) if it["cond"] == c]) for c in conds]
    out = []
    for m in em:
        if m == base:
            continue
        for name, idx in groups:
            a, b = [em[m][i] for i in idx], [em[base][i] for i in idx]
            d, lo, hi = bootstrap_ci([x - y for x, y in zip(a, b)])
            out.append({"method": m, "vs": base, "group": name, "questions": len(idx), "diff_points": 100 * d,
                        "diff_ci95": [100 * lo, 100 * hi], "ratio": sum(a) / sum(b) if sum(b) else float("nan"),
                        "p_permutation": paired_permutation_test(a, b)})
    return out


def format_paired(paired: list[dict]) -> str:
    from kvi_engine.benchmarks.results import format_table
    show = [{**r, "diff_points": f"{r['diff_points']:+.1f} [{r['diff_ci95'][0]:+.1f}, {r['diff_ci95'][1]:+.1f}]",
             "ratio": f"{100 * r['ratio']:.1f}%", "p_permutation": f"{r['p_permutation']:.3f}"}
            for r in paired if r["group"] in ("all", "h1", "h2", "n16/h1")]
    return format_table(show, ["method", "vs", "group", "questions", "diff_points", "ratio", "p_permutation"])


def plot(rows: list[dict], path: Path, title: str) -> None:
    from kvi_engine.utils.plotting import pyplot, save_png
    plt = pyplot(str(path))
    hops = sorted({r["hops"] for r in rows})
    fig, axes = plt.subplots(1, len(hops), figsize=(6 * len(hops), 4.4), squeeze=False)
    for ax, h in zip(axes[0], hops):
        for i, m in enumerate(dict.fromkeys(r["method"] for r in rows)):
            rs = sorted((r for r in rows if r["method"] == m and r["hops"] == h), key=lambda r: r["capsules"])
            xs = [r["capsules"] for r in rs]
            ys = [100 * r["em"] for r in rs]
            lo = [100 * (r["em"] - r["em_ci95"][0]) for r in rs]
            hi = [100 * (r["em_ci95"][1] - r["em"]) for r in rs]
            ax.errorbar([x * (1 + 0.03 * (i - 2.5)) for x in xs], ys, yerr=[lo, hi], marker="o", ms=4, capsize=2,
                        label=m)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("capsules (facts) in the context")
        ax.set_ylabel("exact match (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(f"{h}-hop")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, path)


def format_rows(rows: list[dict]) -> str:
    from kvi_engine.benchmarks.results import format_table
    show = [{**r, "em": f"{100 * r['em']:.1f} [{100 * r['em_ci95'][0]:.1f}, {100 * r['em_ci95'][1]:.1f}]",
             "f1": f"{100 * r['f1']:.1f}", "ttft_ms_per_question": f"{r['ttft_ms_per_question']:.2f}",
             "attribution_top1": f"{100 * r['attribution_top1']:.1f}" if "attribution_top1" in r else ""}
            for r in rows]
    return format_table(show, ["method", "capsules", "hops", "questions", "em", "f1", "ttft_ms_per_question",
                               "attribution_top1"])


def rescore(path: Path) -> int:
    """The breakdowns of a stored run (its questions and predictions), without running a model again."""
    import json
    d = json.loads(path.read_text())
    runs = {m: {"preds": p} for m, p in d["preds"].items()}
    for m, tc in d.get("top_capsule", {}).items():
        runs[m]["top_capsule"] = tc
    print(f"{path} ({d.get('command', '')}):")
    print("EM (and attribution) by question direction (fwd: the answer is the fact's object; inv: its subject):")
    print(format_by_direction(by_direction(d["items"], runs)))
    paired = paired_vs(d["items"], runs)
    if paired:
        print("paired against rag (EM points, per question; ratio = correct answers over rag's):")
        print(format_paired(paired))
    return 0


def main(argv=None) -> int:
    from kvi_engine.benchmarks import results as bench_results
    from kvi_engine.utils.plotting import plot_or_skip

    ap = argparse.ArgumentParser(prog="kvi bench fidelity", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="reader", help="'reader', 'reader-adapted' (the shipped ones) or a checkpoint "
                    "directory")
    ap.add_argument("--n", type=int, default=64, help="questions per (capsules, hops) condition")
    ap.add_argument("--ns", default="1,4,16,64")
    ap.add_argument("--hops", default="1,2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--quant", default="fp32", help="bank storage of the KV methods; a comma list (fp32,int8,int4) "
                    "runs the KV methods once per scheme (text methods once), rows labelled method@scheme")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="output stem (default bench/results/fidelity_<model>)")
    ap.add_argument("--rescore", metavar="JSON", default=None,
                    help="no model run: print the direction and paired tables of a stored run's predictions")
    a = ap.parse_args(argv)
    if a.rescore:
        return rescore(Path(a.rescore))
    from kvi_engine.reader import load_reader
    torch.set_num_threads(a.threads)
    model, tok = load_reader(a.model)
    items = build_items(a.n, tuple(int(x) for x in a.ns.split(",")), tuple(int(x) for x in a.hops.split(",")),
                        a.seed)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    quants = [q.strip() for q in a.quant.split(",") if q.strip()]
    runs = run_methods(model, tok, items, methods, max_new_tokens=a.max_new_tokens, quant=quants[0])
    kv = [m for m in methods if m not in ("llm", "rag")]
    for q in quants[1:]:
        if kv:
            runs.update({f"{m}@{q}": r for m, r in run_methods(model, tok, items, kv, max_new_tokens=a.max_new_tokens,
                                                               quant=q, attribution=False).items()})
    rows = score_rows(items, runs)
    paired = paired_vs(items, runs)
    directions = by_direction(items, runs)
    print(format_rows(rows))
    print("EM (and attribution) by question direction (fwd: the answer is the fact's object; inv: its subject):")
    print(format_by_direction(directions))
    if paired:
        print("paired against rag (EM points, per question; ratio = correct answers over rag's):")
        print(format_paired(paired))
    name = Path(a.model).name
    stem = Path(a.out) if a.out else bench_results.default_out(f"fidelity_{name}")
    bench_results.write(stem, "fidelity", rows, vars(a), wall_s={m: r["wall_s"] for m, r in runs.items()},
                        items=items, preds={m: r["preds"] for m, r in runs.items()}, paired=paired,
                        by_direction=directions,
                        top_capsule={m: r["top_capsule"] for m, r in runs.items() if "top_capsule" in r})
    plot_or_skip(plot, rows, stem.with_suffix(".png"),
                 f"knowledge fidelity on {name}: EM vs capsules ({a.n} held-out questions per point, 95% bootstrap CI)")
    print(f"-> {stem}.json/.csv/.png")
    return 0
