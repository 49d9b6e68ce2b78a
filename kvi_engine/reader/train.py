"""Training the reader from scratch: ``kvi train-reader`` (seeded; tqdm; loss PNG; model card).

Recipe (base stage), measured in the prototype runs (kvi_engine/reader/README.md):
  1. a fresh Llama (4 layers, d=256, 4 heads / 2 KV heads, tied embeddings, ~4.2M parameters) with its own
     byte-level BPE tokenizer trained on generated text;
  2. a planted previous-token head (:mod:`kvi_engine.reader.plant`) and an induction warm-up on random tokens
     (copying after a repeat) -- without it plain QA training stayed near 0 EM for the whole budget;
  3. QA training on generated contexts of 1..64 facts (facts as "Context:" lines -- the RAG prompt -- or as running
     text, which is what a stacked KVI capsule sequence looks like), loss on the answer (+ a small weight on the
     question tokens); several questions per context share it through a branch mask (:mod:`.data`).
Experiments on inverse questions (the shipped reader's misses): ``--p-inverse`` (their share in training),
``--grow-after`` (identity-initialised extra layers, e.g. on an ``--init`` checkpoint), ``--plant-carrier LAYER`` (a
planted fact-start head; from scratch it reads explicit separator flags planted at init, is planted itself after the
warm-up, held until ``--carrier-hold`` and re-fit every ``--carrier-refresh`` QA steps).
Adapt stage (``--stage adapt --init DIR``): the same, with the "kvi" format in the mix (block-diagonal attention among
facts, stacked positions) -- the Block-Attention / TurboRAG recipe.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch

from kvi_engine.reader.data import collate, encode, forward_loss
from kvi_engine.reader.generator import Generator, direction
from kvi_engine.reader.tokenizer import Pieces, train_tokenizer


def make_config(tok, a):
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=len(tok), hidden_size=a.hidden, intermediate_size=a.intermediate,
                       num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                       max_position_embeddings=2048, rope_theta=a.rope_theta, tie_word_embeddings=True,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       initializer_range=0.02)


def parse_mix(s: str) -> dict:
    out = {}
    for part in s.split(","):
        k, _, v = part.partition(":")
        if k not in ("rag", "doc", "kvi", "llm") or not v:
            raise ValueError(f"--mix: expected fmt:weight with fmt in rag,doc,kvi,llm, got {part!r}")
        out[k] = float(v)
    return out


def sample_n(rng: random.Random, n_max: int) -> int:
    """Log-uniform number of facts in 1..n_max (small contexts are frequent, long ones present)."""
    return max(1, min(n_max, int(round(math.exp(rng.uniform(0, math.log(n_max + 0.5)))))))


def questions_for(n_facts: int, a) -> int:
    """Questions sharing one context: ``--q-per-ctx``, up to one per two facts (``--q-per-ctx-max``) in long
    contexts -- where a context costs most tokens, more answers are supervised per token computed."""
    return min(max(a.q_per_ctx, a.q_per_ctx_max), max(a.q_per_ctx, n_facts // 2))


class Stream:
    """Endless batches: one n_facts per batch (little padding), a format per example; n_max ramps up."""

    def __init__(self, gen, pieces, a, mix):
        self.gen, self.pieces, self.a, self.mix = gen, pieces, a, mix
        self.rng = random.Random(a.seed + 7)

    def batch(self, frac: float):
        """A batch at training progress ``frac`` (0..1): n_max ramps from --nmax-start to --nmax over --ramp."""
        a = self.a
        n_max = int(round(a.nmax_start + (a.nmax - a.nmax_start) * min(1.0, frac / max(a.ramp, 1e-9))))
        n = sample_n(self.rng, max(1, n_max))
        exs, tokens = [], 0
        fmts, wts = list(self.mix), list(self.mix.values())
        while tokens < a.batch_tokens:
            c = self.gen.context(n, questions_for(n, a), hops=(1, 2) if self.rng.random() < a.p_two_hop else (1,),
                                 p_two_hop=a.p_two_hop)
            fmt = self.rng.choices(fmts, weights=wts)[0]
            ex = encode(self.pieces, c.facts, c.questions, fmt, q_weight=a.q_weight)
            exs.append(ex)
            tokens += len(ex.ctx) + sum(len(b[0]) for b in ex.branches)
        return collate(exs, self.pieces.pad), n, tokens


def induction_batch(g: torch.Generator, vocab: int, specials: int, B: int = 16, T: int = 64):
    """Random token rows [BOS, noise, x, noise, x]: the second x is predictable only by induction (copying what
    followed the same token earlier); x and the gaps vary in length per row, so no fixed offset works."""
    ids = torch.randint(specials, vocab, (B, T), generator=g)
    ids[:, 0] = 0
    w = torch.zeros(B, T)
    for r in range(B):
        S = int(torch.randint(6, min(28, (T - 1) // 2) + 1, (1,), generator=g))
        a = 1 + int(torch.randint(0, T - 2 * S, (1,), generator=g))
        b = a + S + int(torch.randint(0, T - S - (a + S) + 1, (1,), generator=g))
        ids[r, b:b + S] = ids[r, a:a + S].clone()
        w[r, b:b + S - 1] = 1.0  # position t predicts t+1: from the 2nd token of the repeat on
    labels = torch.cat([ids[:, 1:], torch.zeros(B, 1, dtype=torch.long)], 1)
    return ids, labels, w


def heldout_sets(n_per: int = 32, seed: int = 99, ns=(1, 4, 16), hops=(1, 2)):
    """Fixed held-out contexts (entities of the test split): {(n, hop): [Context]} with one question each."""
    g = Generator(seed=seed, split="test")
    return {(max(n, 2) if hop == 2 else n, hop): [g.context(max(n, 2) if hop == 2 else n, 1, hops=(hop,))
                                                  for _ in range(n_per)] for hop in hops for n in ns}


@torch.no_grad()
def teacher_forced_em(model, pieces, sets, fmts=("rag", "doc", "kvi"), bs_tokens: int = 6000) -> dict:
    """Teacher-forced exact match (every answer token and EOS is the argmax) per ``fmt/n<N>/h<hops>``: a cheap
    proxy of greedy EM used during training; the benchmark (``kvi bench fidelity``) decodes for real."""
    was = model.training
    model.eval()
    res = {}
    for (n, hop), ctxs in sets.items():
        for fmt in fmts:
            exs = [encode(pieces, c.facts, c.questions, fmt) for c in ctxs]
            ok, i = [], 0
            while i < len(exs):
                j, tok = i, 0
                while j < len(exs) and (tok == 0 or tok + len(exs[j].ctx) + 40 <= bs_tokens):
                    tok += len(exs[j].ctx) + 40
                    j += 1
                _, tf = forward_loss(model, collate(exs[i:j], pieces.pad), return_tf=True)
                ok += tf
                i = j
            res[f"{fmt}/n{n}/h{hop}"] = sum(ok) / len(ok)
            for d in ("fwd", "inv"):  # the shipped reader's misses are inverse: watch them apart
                sel = [k for k, c in enumerate(ctxs) if direction(c.triples, c.questions[0].support,
                                                                   c.questions[0].answer) == d]
                if sel:
                    res[f"{fmt}/n{n}/h{hop}/{d}"] = sum(ok[k] for k in sel) / len(sel)
    model.train(was)
    return res


def autocast_dtype(a, device: str = "cpu"):
    """The dtype matmuls run in during training (master weights, optimizer state, loss and evaluation stay float32).
    ``auto``: bfloat16 where the device has native bf16 kernels -- on a CPU, oneDNN's AVX512-BF16 / AMX (1.5x the
    tokens/s of float32 on this 2-core EPYC, measured); on a GPU, bf16 tensor cores -- else float32 (emulated bf16
    would be slower)."""
    if a.autocast == "bf16":
        return torch.bfloat16
    if a.autocast == "auto":
        native = torch.cuda.is_bf16_supported() if device.startswith("cuda") else \
            torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return torch.bfloat16 if native else None
    return None


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: no CUDA device is available here (use --device cpu)")
    return name


def plot_losses(log: list[dict], path: Path) -> None:
    from kvi_engine.utils.plotting import pyplot, save_png
    plt = pyplot(str(path))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ind = [r for r in log if "induction_step" in r]
    qa = [r for r in log if "step" in r and "loss" in r]
    if ind:
        axes[0].plot([r["induction_step"] for r in ind], [r["loss"] for r in ind], label="induction warm-up loss")
        axes[0].set_xlabel("induction step")
        axes[0].legend()
    if qa:
        axes[1].plot([r["step"] for r in qa], [r["ema"] for r in qa], label="loss (EMA)")
        axes[1].plot([r["step"] for r in qa], [r["ans_ema"] for r in qa], label="answer loss (EMA)")
        axes[1].set_xlabel("QA step")
        axes[1].set_yscale("log")
        axes[1].legend()
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.suptitle("reader training")
    fig.tight_layout()
    save_png(fig, path)


def train(a) -> dict:
    """Train one stage into ``a.out`` (checkpoint, tokenizer, log.jsonl, loss.png, train_info.json)."""
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kvi_engine.utils.plotting import plot_or_skip

    if a.carrier_refresh and a.plant_carrier is None:
        raise ValueError("--carrier-refresh needs --plant-carrier LAYER (there is no carrier to re-fit)")
    device = resolve_device(a.device)  # before any work: a missing GPU fails in a second, not after the tokenizer
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    logf = open(out / "log.jsonl", "w")

    def log(rec):
        records.append(rec)
        logf.write(json.dumps(rec) + "\n")
        logf.flush()

    t0 = time.time()
    if a.init:
        tok = AutoTokenizer.from_pretrained(a.init)
        model = AutoModelForCausalLM.from_pretrained(a.init, dtype=torch.float32, attn_implementation="sdpa")
    else:
        tok = train_tokenizer(Generator(seed=a.seed + 1234), vocab_size=a.vocab, n_contexts=a.tokenizer_contexts)
        model = AutoModelForCausalLM.from_config(make_config(tok, a), dtype=torch.float32,
                                                 attn_implementation="sdpa")
        if a.plant:
            from kvi_engine.reader.plant import plant_previous_token_head
            amp, nf = a.plant.split(",")
            plant_previous_token_head(model, amp=float(amp), n_freq=int(nf))
    pieces = Pieces(tok)
    if a.grow_after:
        from kvi_engine.reader.plant import grow_layers
        grow_layers(model, [int(x) for x in a.grow_after.split(",")])
    plants, hold = {}, None
    # from scratch, the carrier reads explicit separator flags (held through the warm-up and early QA training);
    # on a trained checkpoint it reads a probe fit on every dimension of the layer input
    flags = a.plant_carrier is not None and not a.init and bool(a.plant)
    if a.plant_carrier is not None:
        from kvi_engine.reader.plant import (
            Hold,
            carrier_circuit,
            carrier_inputs,
            fact_start_share,
            plant_fact_start_head,
            plant_separator_flags,
            refit_carrier,
        )
        if flags:  # the flags now, held through the warm-up; the head after it (planted before, it broke the
            # warm-up: 1-9% copy accuracy in 6 runs of 7, against 94-97% with the flags alone)
            plant_separator_flags(model, pieces, below=a.plant_carrier)
            hold = Hold(carrier_circuit(model, a.plant_carrier, with_head=False))
        else:  # a probe on every dimension: planted now, with everything it reads held through the warm-up
            plants = {"fact_start_probe": plant_fact_start_head(model, pieces, layer=a.plant_carrier, seed=a.seed),
                      "fact_start_share": fact_start_share(model, pieces, layer=a.plant_carrier)}
            hold = Hold(carrier_inputs(model, a.plant_carrier))
    model.to(device)
    if hold:  # the values it restores live where the model does
        hold.snapshot()
    nparams = sum(p.numel() for p in model.parameters())
    gen = Generator(seed=a.seed + (0 if a.stage == "base" else 555), split="train", p_rare=a.p_rare_names,
                    p_inverse=a.p_inverse)
    stream = Stream(gen, pieces, a, parse_mix(a.mix))
    sets = heldout_sets(n_per=a.eval_n, ns=tuple(int(x) for x in a.eval_ns.split(",")))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)

    def lr_at(s, f):
        if s < a.warmup:
            return a.lr * (s + 1) / a.warmup
        f = max(0.0, (f - a.warmup / max(1, a.steps)) / max(1e-9, 1 - a.warmup / max(1, a.steps)))
        return a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, f))))

    amp = autocast_dtype(a, device)
    cast = lambda: torch.autocast(device.split(":")[0], dtype=amp, enabled=amp is not None)  # noqa: E731

    def progress(s):
        """Share of the schedule done: by steps, or by training time where --max-minutes would cut it short (the
        learning rate still decays to its floor; then the run is not bit-reproducible across machines)."""
        f = s / max(1, a.steps)
        if a.max_minutes:
            f = max(f, (time.time() - t_train - eval_s) / (a.max_minutes * 60))
        return min(1.0, f)

    model.train()
    times = {"setup_s": time.time() - t0}
    t_train, eval_s = time.time(), 0.0
    if a.induction_steps:
        g = torch.Generator().manual_seed(a.seed)
        bar = tqdm(range(a.induction_steps), desc="induction warm-up", unit="step")
        for s_ in bar:
            for g_ in opt.param_groups:
                g_["lr"] = a.lr * min(1.0, (s_ + 1) / a.warmup)
            ids, labels, w = (t.to(device) for t in induction_batch(g, len(tok), 3, 16, a.induction_len))
            sel = w > 0
            with cast():
                lg = model.lm_head(model.model(input_ids=ids).last_hidden_state[sel])
            loss = torch.nn.functional.cross_entropy(lg.float(), labels[sel])
            loss.backward()
            if hold:
                hold.before_step()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if hold:
                hold.after_step()
            opt.zero_grad(set_to_none=True)
            if s_ % 10 == 0 or s_ == a.induction_steps - 1:
                acc = (lg.argmax(-1) == labels[sel]).float().mean().item()
                log({"induction_step": s_, "loss": round(loss.item(), 4), "acc": round(acc, 3),
                     "elapsed_s": round(time.time() - t_train, 1)})
                bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.2f}")
        times["induction_s"] = time.time() - t_train
    if a.plant_carrier is not None:  # what the induction warm-up left of it
        model.eval()
        if flags:  # plant it on the layer input the warm-up made; then hold the circuit, re-fit every K steps
            plants["fact_start_probe"] = refit_carrier(model, pieces, a.plant_carrier, seed=a.seed, n_contexts=48)
            plants["fact_start_share"] = fact_start_share(model, pieces, layer=a.plant_carrier)
        else:
            plants["fact_start_share_after_warmup"] = fact_start_share(model, pieces, layer=a.plant_carrier)
        model.train()
        log({"plant": "fact_start", "layer": a.plant_carrier, **plants})
        hold = Hold(carrier_circuit(model, a.plant_carrier)) if flags and a.carrier_hold > 0 else None
    tok_total, ema, aema = 0, None, None
    bar = tqdm(range(a.steps), desc=f"{a.stage} QA training", unit="step")
    step = -1
    for step in bar:
        frac = progress(step)
        lr = lr_at(step, frac)
        for g_ in opt.param_groups:
            g_["lr"] = lr
        if hold and frac >= a.carrier_hold:  # released: training decides what it keeps
            model.eval()
            plants["fact_start_share_at_release"] = fact_start_share(model, pieces, layer=a.plant_carrier)
            model.train()
            log({"step": step, "carrier_released": plants["fact_start_share_at_release"]})
            hold = None
        if a.carrier_refresh and step % a.carrier_refresh == 0 and step and frac < a.carrier_until:
            # re-fit the carrier to the layer input QA training has moved, until the lookup can use it; what it
            # kept on its own since the last refit says whether training maintains it
            te = time.time()
            model.eval()
            kept = fact_start_share(model, pieces, layer=a.plant_carrier, n_contexts=3)  # cheap: it runs often
            probe = refit_carrier(model, pieces, a.plant_carrier, seed=a.seed + step) if flags else \
                plant_fact_start_head(model, pieces, layer=a.plant_carrier, seed=a.seed + step, n_contexts=16)
            model.train()
            if hold:
                hold.snapshot()
            log({"step": step, "carrier_refit": probe, "fact_start_share_kept": kept})
            eval_s += time.time() - te
        batch, n, ntok = stream.batch(frac)
        with cast():
            loss, _, aloss = forward_loss(model, batch, answer_loss=True)
        loss.backward()
        if hold:
            hold.before_step()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if hold:
            hold.after_step()
        opt.zero_grad(set_to_none=True)
        tok_total += ntok
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        aema = aloss if aema is None else 0.95 * aema + 0.05 * aloss
        bar.set_postfix(loss=f"{ema:.3f}", answer=f"{aema:.3f}", n=n)
        if step % 10 == 0 or step == a.steps - 1:
            log({"step": step, "loss": round(loss.item(), 4), "ema": round(ema, 4), "ans_ema": round(aema, 4),
                 "n": n, "tokens": tok_total, "lr": lr, "progress": round(frac, 4), "gn": round(float(gn), 3),
                 "elapsed_s": round(time.time() - t_train - eval_s, 1)})
        last = step == a.steps - 1
        out_of_time = a.max_minutes and frac >= 1.0
        if (a.eval_every and step and step % a.eval_every == 0) or last or out_of_time:
            te = time.time()
            log({"step": step, "eval": teacher_forced_em(model, pieces, sets)})
            model.save_pretrained(out, safe_serialization=True)
            tok.save_pretrained(out, save_jinja_files=False)  # chat template inside tokenizer_config.json
            eval_s += time.time() - te
        if out_of_time:
            break
    times["train_s"] = time.time() - t_train - eval_s
    if a.plant_carrier is not None:  # what training kept of it
        model.eval()
        plants["fact_start_share_end"] = fact_start_share(model, pieces, layer=a.plant_carrier)
    if a.save_dtype == "float16":  # the shipped form: half the bytes; load_reader computes in float32 again
        model.to(torch.float16).save_pretrained(out, safe_serialization=True)
        model.to(torch.float32)
    model.to("cpu")
    times["total_s"] = time.time() - t0
    args = {k: v for k, v in vars(a).items() if isinstance(v, (int, float, str, bool, type(None)))}
    info = {"stage": a.stage, "args": args, "times": times, "steps": step + 1, "tokens": tok_total, **plants,
            "autocast_dtype": str(amp).replace("torch.", "") if amp else None,
            "params": nparams, "heldout_teacher_forced_em": next((r["eval"] for r in reversed(records)
                                                                   if "eval" in r), {})}
    (out / "train_info.json").write_text(json.dumps(info, indent=1))
    logf.close()
    plot_or_skip(plot_losses, records, out / "loss.png")
    return info


def add_arguments(p) -> None:
    p.add_argument("--stage", choices=("base", "adapt"), default="base")
    p.add_argument("--out", default="out/reader")
    p.add_argument("--init", default=None, help="checkpoint dir to start from (adapt stage, or to resume)")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-tokens", type=int, default=2048)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--mix", default="rag:0.5,doc:0.5", help="context formats and weights (adapt: add kvi:W)")
    p.add_argument("--nmax", type=int, default=64)
    p.add_argument("--nmax-start", type=int, default=4)
    p.add_argument("--ramp", type=float, default=0.5, help="share of the steps over which n_max ramps up")
    p.add_argument("--q-per-ctx", type=int, default=6)
    p.add_argument("--q-per-ctx-max", type=int, default=0,
                   help="up to this many questions per context, one per two facts (0: always --q-per-ctx)")
    p.add_argument("--p-two-hop", type=float, default=0.3)
    p.add_argument("--q-weight", type=float, default=0.3)
    p.add_argument("--p-rare-names", type=float, default=0.0,
                   help="share of training name cores made of random letters (rare BPE pieces) instead of syllables")
    p.add_argument("--p-inverse", type=float, default=None,
                   help="chance that a question asks for the subject where both directions are askable (default: "
                        "an even choice, as in the held-out sets)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--tokenizer-contexts", type=int, default=6000, help="generated contexts the BPE is trained on")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-n", type=int, default=32)
    p.add_argument("--eval-ns", default="1,4,16")
    p.add_argument("--max-minutes", type=float, default=0, help="stop after this much training time (0: off)")
    p.add_argument("--induction-steps", type=int, default=400, help="induction warm-up steps (base stage)")
    p.add_argument("--induction-len", type=int, default=48)
    p.add_argument("--plant", default="6,8", help="amp,n_freq of the planted previous-token head ('' = none)")
    p.add_argument("--grow-after", default="",
                   help="insert identity-initialised layers after these layer indices (LLaMA Pro block expansion; "
                        "with --init: a deeper model that starts as the old one)")
    p.add_argument("--plant-carrier", type=int, default=None, metavar="LAYER",
                   help="plant a fact-start head (each fact token attends to its fact's first token and copies it: "
                        "what inverse questions need) in head 0 of LAYER; its input must know the previous token")
    p.add_argument("--carrier-hold", type=float, default=0.3,
                   help="from scratch, --plant-carrier's circuit (separator flags, flag head, fact-start query/key) "
                        "is held fixed until this share of QA training (then training decides what it keeps)")
    p.add_argument("--carrier-refresh", type=int, default=0, metavar="K",
                   help="with --plant-carrier: re-fit the carrier every K QA steps (0: never; embeddings that grow "
                        "weaken its scores) ...")
    p.add_argument("--carrier-until", type=float, default=0.3, help="... while training progress is below this")
    p.add_argument("--device", default="cpu", help="cpu, cuda[:N] or auto (a GPU where there is one)")
    p.add_argument("--autocast", choices=("auto", "bf16", "off"), default="auto",
                   help="matmul dtype in training (auto: bf16 where the CPU has native bf16 kernels)")
    p.add_argument("--save-dtype", choices=("float32", "float16"), default="float16",
                   help="dtype of the final checkpoint (training runs in float32; float16 is what the package ships)")
