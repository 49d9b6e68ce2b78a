"""Injection overhead: TTFT, decode tokens/s and peak memory of LLM vs RAG vs KV Prefix vs KVI as the injected
knowledge grows (capsule sweep, batch 1) and as the batch grows (batch sweep, fixed capsules).

    kvi bench overhead                                      # ~100M Qwen2-family CPU bench model, full grid
    kvi bench overhead --capsules 0 32 128 --batch 1 4 --repeats 3                  # a reduced grid
    kvi bench overhead --tiny --capsules 0 8 --batch 1 2 --repeats 1               # smoke run (tests)
    kvi bench overhead --breakdown --capsules 32 128 --quant fp16 --repeats 7      # where KVI's TTFT goes

Methods, all on the same model, dtype, 64-token prompt and greedy decoding, built at the token level:
- llm: the prompt alone.
- rag: the capsule statements as prompt text in front of the prompt (the tokens KVI injects, recomputed).
- kv-prefix: ~14-token sentences, each compiled alone into a sentence bank, injected as KV.
- kvi: the capsules injected as KV from the capsule bank (the KV channel; what the TTFT targets are about).
- kvi-dual: kvi plus the evidence text of the first ``--evidence`` capsules in the prompt, as the query pipeline
  does (its text channel is capped by top-k, so it does not grow with the injected capsules).
One ``generate`` call per repeat: TTFT = call -> first token chosen (for injection it includes building the plan and
gathering capsules from the bank), decode tokens/s = batch * (new tokens - 1) / (total - TTFT). The methods of a
cell run round-robin (one call each per repeat, the order reversed every other repeat); ``ttft_ms`` is the median,
``ttft_ratio_to_llm`` the median of the per-repeat ratios to the LLM call of the same round, which a machine whose
speed drifts disturbs far less than a ratio of separately taken medians.
Peak memory: resident set size (RSS, /proc/self/statm) sampled every ms in a separate, untimed run of the same
call; reported as the increase over the RSS just before it, after returning freed heap to the OS (malloc_trim).
tracemalloc is not used: it does not see PyTorch's tensor allocations. ``cache_mib`` is the analytic size of the
per-request KV cache (knowledge tokens that live in it + prompt + new tokens); the bank's KV is not counted there.

Writes bench/results/overhead.{json,csv,png}; prints the table and the ratios behind the targets (KVI TTFT <= 1.15x
LLM at 32 capsules and <= 1.5x at 128; RAG/KVI TTFT >= 10x at 128).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from kvi_engine.benchmarks import results
from kvi_engine.benchmarks.timing import PeakRSS, paired_ratio, round_robin
from kvi_engine.benchmarks.ttft import synthetic_capsules
from kvi_engine.capsules.capsule import Capsule
from kvi_engine.compile.compiler import compile_bank
from kvi_engine.generate.inject import inject
from kvi_engine.models.loading import load_model
from kvi_engine.testing.tiny import bench_model, tiny_model, tiny_tokenizer
from kvi_engine.utils.plotting import plot_or_skip, pyplot, save_png

METHODS = ("llm", "rag", "kv-prefix", "kvi", "kvi-dual")
_PLACES = ["Kestrel Bay", "Tamsk", "Orrin Vale", "Saltmarsh", "Halden Ridge", "Corvo", "Ilmen", "Brightwater"]


def synthetic_sentences(n: int) -> list[Capsule]:
    """``n`` distinct sentence capsules (subject = the sentence; compiled with the template "{subject}")."""
    return [Capsule(f"Survey station {i} stands near {_PLACES[(i * 5) % len(_PLACES)]}.", "states", f"s{i}")
            for i in range(n)]


@dataclass(slots=True)
class Row:
    sweep: str
    method: str
    capsules: int
    batch: int
    prompt_tokens: int
    knowledge_tokens: int  # per row: recomputed as text (rag, kvi-dual evidence) or injected as KV
    ttft_ms: float
    ttft_ms_min: float
    decode_tok_s: float
    peak_rss_mib: float
    cache_mib: float
    ttft_ratio_to_llm: float = float("nan")
    decode_ratio_to_llm: float = float("nan")  # decode tokens/s over the LLM's, median of per-round ratios




class Bench:
    def __init__(self, model, tok, caps_bank, sent_bank, prompt_ids: list[int], new_tokens: int, evidence: int,
                 clock=time.perf_counter):
        self.model, self.tok, self.new_tokens, self.evidence = model, tok, new_tokens, evidence
        self.clock = clock
        self.banks = {"kvi": caps_bank, "kvi-dual": caps_bank, "kv-prefix": sent_bank}
        prefix = caps_bank.prefix_token_ids
        self.prefix = prefix
        self.prompt = prompt_ids[len(prefix):] if prompt_ids[:len(prefix)] == prefix else prompt_ids
        cfg = model.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.bytes_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * \
            next(model.parameters()).element_size()

    def inputs(self, method: str, n: int, batch: int):
        """(input_ids, capsule ids per row or None, knowledge tokens, tokens living in the request's cache)."""
        caps = self.banks["kvi"]
        text = []
        if method == "rag":
            text = [t for c in range(n) for t in caps.token_ids(c)]
        elif method == "kvi-dual":
            text = [t for c in range(min(n, self.evidence)) for t in caps.token_ids(c)]
        ids = torch.tensor([self.prefix + text + self.prompt] * batch)
        if method in ("llm", "rag"):
            return ids, None, len(text), ids.shape[1]
        injected = sum(len(self.banks[method].token_ids(c)) for c in range(n))
        # with injection the shared prefix comes from the bank, not the prompt
        return ids[:, len(self.prefix):], [list(range(n))] * batch, injected + len(text), ids.shape[1] - len(
            self.prefix)

    @torch.no_grad()
    def run(self, method: str, ids, capsule_ids) -> tuple[float, float]:
        first, clock = {}, self.clock

        class _First:
            def put(self, _):
                first["n"] = first.get("n", 0) + 1
                if first["n"] == 2:  # the first put is the prompt
                    first["t"] = clock()

            def end(self):
                pass

        kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.new_tokens,
                  min_new_tokens=self.new_tokens, do_sample=False, streamer=_First(),
                  pad_token_id=self.tok.pad_token_id)
        t0 = clock()
        if capsule_ids is None:
            self.model.generate(**kw)
        else:
            with inject(self.model, self.banks[method], capsule_ids, check=False):
                self.model.generate(**kw)
        total = clock() - t0
        return first["t"] - t0, total

    def measure(self, sweep: str, methods, n: int, batch: int, repeats: int, warmup: int) -> list[Row]:
        """One row per method of a cell. The methods run round-robin, one call each per repeat, so the machine's
        speed drifting over the run hits them alike; the ratio to LLM is the median of the paired per-repeat
        ratios (a method's call over the LLM call of the same round)."""
        inputs = {m: self.inputs(m, n, batch) for m in methods}
        for _ in range(warmup):
            for m in methods:
                self.run(m, *inputs[m][:2])
        runs = {m: [] for m in methods}
        for order in round_robin(methods, repeats):
            for m in order:
                runs[m].append(self.run(m, *inputs[m][:2]))
        rows = []
        for m in methods:
            ids, capsule_ids, knowledge, cache_tokens = inputs[m]
            with PeakRSS() as mem:
                self.run(m, ids, capsule_ids)
            ttfts = [t for t, _ in runs[m]]
            decode = statistics.median((total - t) for t, total in runs[m])
            tok_s = batch * (self.new_tokens - 1) / decode if decode > 0 and self.new_tokens > 1 else float("nan")
            cache = batch * (cache_tokens + self.new_tokens) * self.bytes_per_token / 2**20
            paired = (paired_ratio([t for t, _ in runs[m]], [t for t, _ in runs["llm"]]) if "llm" in runs
                      else float("nan"))
            # decode time of the LLM's call over this method's, round by round (= tokens/s ratio, paired)
            decode_paired = (paired_ratio([tot - t for t, tot in runs["llm"]], [tot - t for t, tot in runs[m]])
                             if "llm" in runs and self.new_tokens > 1 else float("nan"))
            rows.append(Row(sweep, m, n, batch, len(self.prompt) + len(self.prefix), knowledge,
                            1e3 * statistics.median(ttfts), 1e3 * min(ttfts), tok_s, mem.mib, cache, paired,
                            decode_paired))
        return rows


def breakdown(model, bank, prompt: list[int], capsules: list[int], repeats: int, clock=time.perf_counter) -> list[dict]:
    """Where KVI's TTFT goes beyond the LLM's, per capsule count (batch 1, one forward = the first token): building
    the plan, attaching and detaching the injection, the injected prefill forward against the plain one over
    ``[prefix, prompt]``, and inside it the time in the injected attention op (every layer). Components are medians
    over ``repeats`` round-robin rounds; ``flops_ratio`` is the analytic (weights + injected attention) / weights
    FLOP ratio, the floor that no fixed-cost work can go under."""
    from kvi_engine.attention import op as attention_op
    from kvi_engine.generate import inject as inject_mod
    from kvi_engine.generate.inject import attach
    from kvi_engine.models import rope
    from kvi_engine.plan.plan import build_plan

    cfg = model.config
    prefix = bank.prefix_token_ids
    own = prompt[len(prefix):] if prompt[:len(prefix)] == prefix else prompt
    plain, ids = torch.tensor([prefix + own]), torch.tensor([own])
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    weights = 2 * sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    spent = {"attention": 0.0}
    real = attention_op.prefix_attention

    def timed(*a, **k):
        t = clock()
        try:
            return real(*a, **k)
        finally:
            spent["attention"] += clock() - t

    def forward(x):
        return model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=True, logits_to_keep=1).logits

    rows = []
    with torch.no_grad():
        for n in capsules:
            runs = {k: [] for k in ("llm", "plan", "attach", "prefill", "attention", "detach", "kvi")}
            for r in range(repeats + 1):
                t = clock()
                forward(plain)
                t_llm = clock() - t
                spent["attention"] = 0.0
                t0 = clock()
                rope.check_repositionable(model)
                plan = build_plan(bank, [list(range(n))])
                t1 = clock()
                scope = attach(model, plan)
                scope.__enter__()
                t2 = clock()
                inject_mod.attention.prefix_attention = timed
                try:
                    forward(ids)
                finally:
                    inject_mod.attention.prefix_attention = real
                t3 = clock()
                scope.__exit__(None, None, None)
                t4 = clock()
                if r:  # round 0 warms up
                    for k, v in (("llm", t_llm), ("plan", t1 - t0), ("attach", t2 - t1), ("prefill", t3 - t2),
                                 ("attention", spent["attention"]), ("detach", t4 - t3), ("kvi", t4 - t0)):
                        runs[k].append(v)
            slots = plan.num_slots
            attn_flops = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * len(own) * slots * head_dim
            row = {"capsules": n, "injected_tokens": slots, "prompt_tokens": len(prefix + own)}
            row.update({f"{k}_ms": 1e3 * statistics.median(v) for k, v in runs.items()})
            row["kvi_over_llm"] = paired_ratio(runs["kvi"], runs["llm"])
            row["flops_ratio"] = (weights * len(prefix + own) + attn_flops) / (weights * len(prefix + own))
            row["attention_gflops"] = attn_flops / statistics.median(runs["attention"]) / 1e9
            rows.append(row)
    return rows


def targets(rows: list[Row]) -> list[str]:
    """The issue's targets on the capsule sweep (batch 1), where the grid has the cells."""
    cell = {(r.method, r.capsules): r for r in rows if r.sweep == "capsules"}
    lines = []
    for n, limit in ((32, 1.15), (128, 1.5)):
        if ("kvi", n) in cell and ("llm", n) in cell:
            x = cell["kvi", n].ttft_ratio_to_llm
            lines.append(f"KVI/LLM TTFT at {n} capsules: {x:.2f}x (target <= {limit}x): "
                         f"{'met' if x <= limit else 'NOT met'}")
    if ("kvi", 128) in cell and ("rag", 128) in cell:
        rag, kvi = cell["rag", 128], cell["kvi", 128]
        x = (rag.ttft_ratio_to_llm / kvi.ttft_ratio_to_llm if ("llm", 128) in cell  # paired, when LLM ran
             else rag.ttft_ms / kvi.ttft_ms)
        lines.append(f"RAG/KVI TTFT at 128 capsules: {x:.1f}x (target >= 10x): {'met' if x >= 10 else 'NOT met'}")
    return lines


def plot(rows: list[Row], path: str) -> None:
    plt = pyplot(path)

    metrics = (("ttft_ms", "TTFT (ms)"), ("decode_tok_s", "decode tokens/s"), ("peak_rss_mib", "peak RSS increase (MiB)"))
    sweeps = [(s, x) for s, x in (("capsules", "capsules"), ("batch", "batch")) if any(r.sweep == s for r in rows)]
    fig, axes = plt.subplots(len(sweeps), 3, figsize=(13, 3.6 * len(sweeps)), dpi=110, squeeze=False)
    for i, (sweep, x) in enumerate(sweeps):
        for j, (key, label) in enumerate(metrics):
            ax = axes[i][j]
            for m in METHODS:
                pts = sorted((getattr(r, x), getattr(r, key)) for r in rows if r.sweep == sweep and r.method == m)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=m)
            ax.set_xlabel(f"{x} ({'batch 1' if sweep == 'capsules' else 'fixed capsules'})")
            ax.set_ylabel(label)
            if key == "ttft_ms":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="kvi bench overhead", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF name or local dir (default: the ~100M random CPU bench model)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (smoke runs and tests)")
    ap.add_argument("--capsules", type=int, nargs="+", default=[0, 8, 32, 64, 128, 256],
                    help="capsule sweep at batch 1")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32],
                    help="batch sweep at --batch-capsules")
    ap.add_argument("--batch-capsules", type=int, default=32)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--evidence", type=int, default=8, help="evidence capsules as text in kvi-dual (pipeline top-k)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: perf_counter (what a user sees); cpu: process CPU time, steadier on a shared machine "
                         "(sums every thread: use with --threads 1)")
    ap.add_argument("--breakdown", action="store_true",
                    help="only the TTFT breakdown at --capsules (plan, attach, prefill, attention op, detach) -> "
                         "<out>_breakdown.json")
    ap.add_argument("--quant", default="fp32", help="capsule bank storage (fp32, fp16, int8, ...)")
    ap.add_argument("--out", default=str(results.default_out("overhead")))
    args = ap.parse_args(argv)
    if min(args.capsules + [args.batch_capsules]) < 0 or min(args.batch) < 1 or args.new_tokens < 1:
        ap.error("capsules must be >= 0, batch sizes and --new-tokens >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        tok = tiny_tokenizer()
        model = tiny_model("qwen2", tok)
    elif args.model:
        model, tok, _ = load_model(args.model, dtype=torch.float32, allow_fallback=False)
    else:
        model, tok = bench_model()
    n_params = sum(p.numel() for p in model.parameters())
    most = max(args.capsules + [args.batch_capsules, 1])
    grid = [("capsules", n, 1) for n in args.capsules] + [("batch", args.batch_capsules, b) for b in args.batch]
    with tempfile.TemporaryDirectory() as d:
        caps = compile_bank(model, tok, synthetic_capsules(most), os.path.join(d, "capsules"), quant=args.quant)
        if args.breakdown:
            text = " ".join(f"Question {i}: which district holds station {i} of the survey?" for i in range(40))
            prompt = (caps.prefix_token_ids + tok(text, add_special_tokens=False).input_ids)[:args.prompt_tokens]
            clock = time.perf_counter if args.clock == "wall" else time.process_time
            rows = breakdown(model, caps, prompt, [n for n in args.capsules if n > 0], args.repeats, clock)
            print(f"TTFT breakdown: {type(model).__name__} {n_params / 1e6:.0f}M, {args.quant} bank, "
                  f"{torch.get_num_threads()} threads, median of {args.repeats} rounds ({args.clock} clock)")
            print(results.format_table(rows, list(rows[0])))
            results.write(args.out + "_breakdown", "overhead-breakdown", rows, vars(args), model_params=n_params)
            print(f"wrote {args.out}_breakdown.json / .csv")
            return 0
        sents = compile_bank(model, tok, synthetic_sentences(most), os.path.join(d, "sentences"), quant="fp32",
                             templates={"states": "{subject}"})
        text = " ".join(f"Question {i}: which district holds station {i} of the survey?" for i in range(40))
        prompt = (caps.prefix_token_ids + tok(text, add_special_tokens=False).input_ids)[:args.prompt_tokens]
        clock = time.perf_counter if args.clock == "wall" else time.process_time
        bench = Bench(model, tok, caps, sents, prompt, args.new_tokens, args.evidence, clock)
        cap_tokens = caps.num_tokens / caps.num_capsules
        sent_tokens = sents.num_tokens / sents.num_capsules
        meta = dict(model_params=n_params, prompt_tokens=len(prompt), capsule_tokens=cap_tokens,
                    sentence_tokens=sent_tokens, new_tokens=args.new_tokens, repeats=args.repeats, clock=args.clock,
                    memory="peak RSS increase over the pre-call RSS (/proc/self/statm, 1 ms sampling, "
                           "after malloc_trim)")
        rows = []
        for s, n, b in tqdm(grid, desc="overhead", unit="cell"):
            rows += bench.measure(s, args.methods, n, b, args.repeats, args.warmup)
            # written after every cell: a long run stopped midway keeps what it measured
            results.write(args.out, "overhead", rows, vars(args), **meta, complete=False)
    print(f"model: {type(model).__name__} {n_params / 1e6:.0f}M params, {model.dtype}, {torch.get_num_threads()} "
          f"threads; prompt {len(prompt)} tokens; capsules ~{cap_tokens:.1f} tokens, sentences ~{sent_tokens:.1f}; "
          f"{args.new_tokens} new tokens; median of {args.repeats} round-robin repeats (ratios: median of paired "
          f"ratios); {args.clock} clock")
    print(results.format_table(rows, ["sweep", "method", "capsules", "batch", "knowledge_tokens", "ttft_ms",
                              "ttft_ratio_to_llm", "decode_tok_s", "decode_ratio_to_llm", "peak_rss_mib",
                              "cache_mib"]))
    lines = targets(rows)
    print("\n".join(lines))
    doc = results.write(args.out, "overhead", rows, vars(args), **meta, complete=True, targets=lines)
    plot_or_skip(plot, rows, args.out + ".png")
    print(f"wrote {args.out}.json / .csv / .png ({doc['commit'] or 'no commit'})")
    return 0
