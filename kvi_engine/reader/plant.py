"""Structured initialisation: plant a previous-token attention head in layer 0 of a fresh Llama/Qwen2 model (and,
as an experiment on inverse questions, a fact-start head; identity-initialised layer growth -- below).

Induction ("after A came B before, so predict B") needs a previous-token head plus a head that matches on it; each
is useless without the other, so from a random init a small model sits on a long plateau (measured: > 1500 steps
on random-token copying). Planting the first half removes the plateau; the rest is learned. Nothing else changes:
the model is a plain HF model, trained from scratch (no pretrained weights).

How: embedding dimension 0 is set to a constant for every token, so after RMSNorm every hidden state has a
near-constant component. Head 0 of layer 0 reads only that component for its query and key, shaped per RoPE
frequency so that the score between positions m and n is  a^2 * sum_i cos(((m - n) - 1) * theta_i): maximal at
m - n = 1, whatever the tokens. Its value/output maps are scaled up so it writes the previous token's (projected)
embedding into the residual stream. With tied embeddings the constant dimension adds the same logit to every token
(softmax-invariant).
"""
from __future__ import annotations

import math

import torch


@torch.no_grad()
def plant_previous_token_head(model, amp: float = 3.0, const: float = 0.1, n_freq: int | None = None,
                              ov_scale: float = 4.0, layer: int = 0, head: int = 0):
    cfg = model.config
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    kvh = head // group
    emb = model.get_input_embeddings().weight
    emb[:, 0] = const
    attn = model.model.layers[layer].self_attn
    inv_freq = model.model.rotary_emb.inv_freq.float()
    half = D // 2
    n_freq = n_freq or half
    # normalised value of dim 0 after RMSNorm (per token it varies a little; use the mean)
    rms = emb.float().pow(2).mean(1).sqrt()
    c = float((const / rms).mean())
    qs, ks = slice(head * D, (head + 1) * D), slice(kvh * D, (kvh + 1) * D)
    attn.q_proj.weight[qs, :] *= 0.1
    attn.k_proj.weight[ks, :] *= 0.1
    for i in range(n_freq):
        th = float(inv_freq[i])
        attn.q_proj.weight[head * D + i, 0] = amp / c
        attn.q_proj.weight[head * D + i + half, 0] = 0.0
        attn.k_proj.weight[kvh * D + i, 0] = amp * torch.cos(torch.tensor(th)).item() / c
        attn.k_proj.weight[kvh * D + i + half, 0] = amp * torch.sin(torch.tensor(th)).item() / c
    attn.v_proj.weight[ks, :] *= ov_scale
    attn.o_proj.weight[:, qs] *= ov_scale
    for b in ("q_proj", "k_proj"):
        if getattr(attn, b).bias is not None:  # Qwen2 has q/k/v biases
            getattr(attn, b).bias[qs if b == "q_proj" else ks] = 0.0
    return model


@torch.no_grad()
def previous_token_share(model, T: int = 256, layer: int = 0, head: int = 0, seed: int = 0) -> float:
    """Mean attention weight of ``head`` on the previous token, over random token sequences."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (2, T), generator=g)
    ids[:, 0] = 0
    old = model.config._attn_implementation
    model.set_attn_implementation("eager")
    out = model(input_ids=ids, output_attentions=True)
    model.set_attn_implementation(old)
    a = out.attentions[layer][:, head]  # [B, T, T]
    return float(torch.diagonal(a, offset=-1, dim1=1, dim2=2).mean())


# ---------------------------------------------------------------------------------------------------------------
# Fact-start carrier: the second plateau. An inverse question ("Which company is headquartered in X?") asks for a
# fact's subject, which comes BEFORE its key (X) in the fact; a causal reader can only answer it if X's tokens carry
# the subject forward. Finding the fact and carrying its subject are useless one without the other, so -- as with
# induction -- neither is learned: the shipped reader answers 95% of forward questions at 16 capsules and 17% of
# inverse ones, and the few it gets attend to another fact (kvi_engine/reader/README.md). The carrier is planted;
# finding the fact is left to training.

def separator_ids(pieces) -> set:
    """Tokens after which a fact starts in every context format: BOS (capsule / document start), '-' (RAG lines),
    '.' (running text); '\\n' is one too, so that a line break is not mistaken for a fact's first token."""
    return {pieces.bos} | {i for s in ("-", ".", "\n") for i in pieces.cont([s])[0]}


@torch.no_grad()
def _layer_inputs(model, pieces, layer: int, n_contexts: int, seed: int):
    """Normalised inputs of ``layer``'s attention on generated contexts (rag, doc and kvi formats in turn), and per
    token whether it is the first token of a fact."""
    import random

    from kvi_engine.reader.data import collate, encode
    from kvi_engine.reader.generator import Generator

    g, rng, sep = Generator(seed=seed, split="train"), random.Random(seed), separator_ids(pieces)
    xs, ys, raw = [], [], []
    for k in range(n_contexts):
        c = g.context(rng.choice([2, 4, 8, 16]), 1)
        ex = encode(pieces, c.facts, c.questions, ("rag", "doc", "kvi")[k % 3])
        b = collate([ex], pieces.pad)
        dev = model.lm_head.weight.device
        out = model.model(input_ids=b["input_ids"].to(dev), position_ids=b["position_ids"].to(dev),
                          attention_mask=b["mask"].to(dev), output_hidden_states=True, use_cache=False)
        x = model.model.layers[layer].input_layernorm(out.hidden_states[layer])[0].float().cpu()
        raw.append(out.hidden_states[layer][0].float().pow(2).mean(-1).sqrt().mean().item())
        ids = b["input_ids"][0].tolist()
        for t in range(len(ex.ctx)):  # BOS and the capsules' BOS copies are keys too, never a fact's first token
            xs.append(x[t])
            ys.append(float(t > 0 and not ex.hidden[t] and ids[t - 1] in sep and ids[t] not in sep))
    return torch.stack(xs), torch.tensor(ys), sum(raw) / len(raw)


@torch.no_grad()
def plant_fact_start_head(model, pieces, layer: int, head: int = 0, flag: float = 14.0, recency: float = 20.0,
                          freqs=(9, 10, 11, 12, 13), flag_dims=(28, 29, 30, 31), n_contexts: int = 48,
                          seed: int = 0, features=None) -> dict:
    """Set ``head`` of ``layer`` so that every token attends to the first token of its own fact and copies it.

    Score(m, n) = flag * start(n) + recency * mean_i cos(theta_i (m - n)): ``start`` is a linear probe of the layer
    input (ridge least squares on generated contexts), read by the key on near-zero RoPE frequencies (position-free)
    against a query that reads a direction constant on every token; the recency term is RoPE-shaped (query and key
    both constant on mid frequencies), so the most recent fact start wins. The value/output map is the projection
    onto the head's value rows (o = pinv(V)). Needs a layer whose input already knows the previous token (layer 1 of
    a model whose layer 0 has the planted previous-token head is too weak on the trained reader -- 95% probe
    accuracy; layer 2 is exact). ``features``: fit the probe (and the constant direction, on the first of them) on
    these residual dimensions only -- the explicit flags of :func:`plant_separator_flags`, which training does not
    wash out the way it washes out a probe spread over every dimension. Returns the probe's accuracy and margins."""
    cfg = model.config
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kvh = head // (cfg.num_attention_heads // cfg.num_key_value_heads)
    X, y, scale = _layer_inputs(model, pieces, layer, n_contexts, seed)
    H = X.shape[1]
    if features is None:  # ridge least squares on every dimension
        eye = 1e-2 * torch.eye(H + 1)
        Xa = torch.cat([X, torch.ones(len(X), 1)], 1)
        w = torch.linalg.solve(Xa.T @ Xa + eye, Xa.T @ y)
        u = torch.linalg.solve(X.T @ X + eye[:-1, :-1], X.T @ torch.ones(len(X)))  # u.x ~ 1 on every token
        wk = w[:-1] + w[-1] * u  # the probe's bias rides on the constant direction
        p = Xa @ w
    else:  # explicit flags (const, sep, prev-sep): start = prev-sep / its mean on starts - 3 sep / its mean on seps
        c, f1, f2 = features
        sep = X[:, f1] > 0.5 * X[:, f1].max()
        u, wk = torch.zeros(H), torch.zeros(H)
        u[c] = 1.0 / X[:, c].mean()
        wk[f2] = 1.0 / X[y > 0, f2].mean()
        wk[f1] = -3.0 / X[sep, f1].mean()  # a separator after a separator ("\n-") is never a start
        p = X @ wk
    dev = model.lm_head.weight.device
    u, wk = u.to(dev), wk.to(dev)
    attn = model.model.layers[layer].self_attn
    qs, ks = slice(head * D, (head + 1) * D), slice(kvh * D, (kvh + 1) * D)
    attn.q_proj.weight[qs] = 0.0
    attn.k_proj.weight[ks] = 0.0
    rkey = wk if features is not None else u  # explicit flags: only starts are keys at all (norm-proof)
    for dims, gain, key in ((flag_dims, flag, wk), (freqs, recency, rkey)):
        a = (gain / len(dims)) ** 0.5
        for i in dims:  # dim i pairs with i + D/2 under RoPE; leaving the partner at 0 gives q_i k_i cos(theta_i d)
            attn.q_proj.weight[head * D + i] = a * u * D ** 0.5  # HF divides scores by sqrt(D)
            attn.k_proj.weight[kvh * D + i] = a * key
    for b, sl in (("q_proj", qs), ("k_proj", ks)):
        if getattr(attn, b).bias is not None:
            getattr(attn, b).bias[sl] = 0.0
    # with explicit flags (from scratch) it writes the fact start's input back at the residual stream's own scale:
    # an unscaled copy of the normalised input (rms 1) is ~30x a fresh model's residual (rms ~0.03)
    o = torch.linalg.pinv(attn.v_proj.weight[ks].float().cpu())
    attn.o_proj.weight[:, qs] = (o * (scale if features is not None else 1.0)).to(attn.o_proj.weight)
    return {"probe_accuracy": float(((p > 0.5) == (y > 0.5)).float().mean()), "start_mean": float(p[y > 0].mean()),
            "other_mean": float(p[y == 0].mean()), "other_sd": float(p[y == 0].std()), "tokens": len(y)}


@torch.no_grad()
def fact_start_share(model, pieces, layer: int, head: int = 0, n_contexts: int = 12, seed: int = 77) -> dict:
    """Per context format: the mean attention weight that a fact's tokens put on their own fact's first token."""
    from kvi_engine.reader.data import collate, encode
    from kvi_engine.reader.generator import Generator

    g, sep = Generator(seed=seed, split="test"), separator_ids(pieces)
    old = model.config._attn_implementation
    model.set_attn_implementation("eager")  # eager takes an additive mask, not a boolean one
    out = {}
    try:
        for fmt in ("rag", "doc", "kvi"):
            tot, hit = 0, 0.0
            for _ in range(n_contexts):
                c = g.context(16, 1)
                ex = encode(pieces, c.facts, c.questions, fmt)
                b = collate([ex], pieces.pad)
                dev = model.lm_head.weight.device
                mask = torch.zeros(b["mask"].shape, device=dev).masked_fill(~b["mask"].to(dev), float("-inf"))
                a = model.model(input_ids=b["input_ids"].to(dev), position_ids=b["position_ids"].to(dev),
                                attention_mask=mask, output_attentions=True, use_cache=False
                                ).attentions[layer][0, head].cpu()
                ids, start = b["input_ids"][0].tolist(), None
                for t in range(1, len(ex.ctx)):
                    if ex.hidden[t] or ids[t] in sep:
                        continue
                    if ids[t - 1] in sep:
                        start = t
                    if start is not None:
                        tot, hit = tot + 1, hit + float(a[t, start])
            out[fmt] = hit / max(1, tot)
    finally:
        model.set_attn_implementation(old)
    return out


@torch.no_grad()
def grow_layers(model, after) -> None:
    """Depth up-scaling (LLaMA Pro's block expansion): after each layer index in ``after``, a copy of that layer
    whose output projections (attention o_proj, MLP down_proj) are zero -- the grown model computes exactly what the
    original did, and fine-tuning decides what the new layers do."""
    import copy as _copy
    layers = []
    for i, lyr in enumerate(model.model.layers):
        layers.append(lyr)
        if i in set(after):
            new = _copy.deepcopy(lyr, memo={id(model.config): model.config})  # the config stays shared
            new.self_attn.o_proj.weight.zero_()
            new.mlp.down_proj.weight.zero_()
            layers.append(new)
    for i, lyr in enumerate(layers):
        lyr.self_attn.layer_idx = i
    model.model.layers = torch.nn.ModuleList(layers)
    model.config.num_hidden_layers = len(layers)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[0]] * len(layers)


def carrier_inputs(model, layer: int, head: int = 0) -> list:
    """(parameter, index) pairs that the planted fact-start head in ``layer`` computes from: the embeddings (tied
    with the LM head), every layer below it, its input norm and its own query/key/value/output slices. Training
    that moves these (the induction warm-up on random tokens does) moves the probe's start flag away from where the
    head reads it -- measured: 91 / 82 / 87% of its attention on the fact start before the warm-up, 7 / 3 / 19%
    after."""
    cfg = model.config
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kvh = head // (cfg.num_attention_heads // cfg.num_key_value_heads)
    qs, ks = slice(head * D, (head + 1) * D), slice(kvh * D, (kvh + 1) * D)
    every = slice(None)
    out = [(model.get_input_embeddings().weight, every)]
    out += [(p, every) for lyr in model.model.layers[:layer] for p in lyr.parameters()]
    lyr = model.model.layers[layer]
    attn = lyr.self_attn
    out += [(lyr.input_layernorm.weight, every), (attn.q_proj.weight, qs), (attn.k_proj.weight, ks),
            (attn.v_proj.weight, ks), (attn.o_proj.weight, (every, qs))]
    out += [(getattr(attn, b).bias, sl) for b, sl in (("q_proj", qs), ("k_proj", ks), ("v_proj", ks))
            if getattr(attn, b).bias is not None]
    return out


class Hold:
    """Keep (parameter, index) pairs at their current values through optimiser steps: their gradients are zeroed
    before the step (AdamW's moments stay empty, so nothing is left over when they are released) and the values
    restored after it (decoupled weight decay would still shrink them)."""

    def __init__(self, items):
        self.items = [(p, idx, None) for p, idx in items]
        self.snapshot()

    def snapshot(self) -> None:
        """Hold the current values from now on (after a re-plant: else the next step would undo it)."""
        self.items = [(p, idx, p.detach()[idx].clone()) for p, idx, _ in self.items]

    def before_step(self) -> None:
        for p, idx, _ in self.items:
            if p.grad is not None:
                p.grad[idx] = 0.0

    @torch.no_grad()
    def after_step(self) -> None:
        for p, idx, v in self.items:
            p[idx] = v


# Residual dimensions of the carrier's explicit inputs (0 is the previous-token head's constant, which training
# moves: the carrier has a constant of its own, held with the flags).
SEPARATOR_FLAG, PREV_SEPARATOR_FLAG, CARRIER_CONST = 1, 2, 3
CARRIER_FEATURES = (CARRIER_CONST, SEPARATOR_FLAG, PREV_SEPARATOR_FLAG)  # the constant first (the probe's bias)


FLAG_AMP, FLAG_FREQS, FLAG_BIAS = 16.0, 8, 7.5  # the flag head's score: see _flag_head_qk
CARRIER_FLAG = 24.0  # the fact-start score's gain on explicit flags (14: 67% share in rag contexts at init)


def flag_head(model) -> int:
    """The layer-0 head that copies the separator flag forward: the last one (head 0 is the previous-token head)."""
    return model.config.num_attention_heads - 1


@torch.no_grad()
def plant_separator_flags(model, pieces, below: int = 1, flag: float = 0.1, gain: float = 0.1,
                          const: float = 0.1) -> None:
    """Explicit inputs for the fact-start head, in dimensions nothing else writes: embedding dimension 1 is
    ``flag`` on the separator tokens (:func:`separator_ids`) and 0 elsewhere, dimension 3 a constant; a head of
    layer 0 of its own (:func:`flag_head`, :func:`_flag_head_qk`) copies the previous token's flag into dimension 2
    through its last value dimension. After layer 0 a fact's first token has dimension 2 set and 1 clear: a
    three-feature probe (with the constant) reads the start, and Adam's updates, which move every dimension of a
    0.02-scale embedding by its own size in the first few dozen steps, do not erase it (they erased a probe fit on
    all 256 dimensions within 10 QA steps, and one keyed on the shipped previous-token head's constant, which
    training moves, within 40 -- measured). No layer below ``below`` writes dimensions 1..3 (layer 0 writing the
    constant made the query's sign vary from token to token: 2% share, measured). Their magnitudes still scale
    with 1/rms as embeddings grow: :func:`refit_carrier` re-scales them."""
    cfg = model.config
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    head = flag_head(model)
    kvh = head // group
    if kvh == 0:  # its key rows would overwrite the previous-token head's
        raise ValueError(f"plant_separator_flags: the flag head ({head}) shares KV head 0 with the previous-token "
                         f"head ({cfg.num_attention_heads} query / {cfg.num_key_value_heads} KV heads); needs >= 2 "
                         "KV heads")
    f1, f2 = SEPARATOR_FLAG, PREV_SEPARATOR_FLAG
    emb = model.get_input_embeddings().weight
    emb[:, f1:f2 + 1] = 0.0
    emb[sorted(separator_ids(pieces)), f1] = flag
    emb[:, CARRIER_CONST] = const
    lyr = model.model.layers[0]
    attn = lyr.self_attn
    # its query and the key rows it uses read the constant only (the key rows are shared with its group, which loses
    # them): anything else there is learned for other purposes and blurs the previous-token peak (measured)
    attn.q_proj.weight[head * D:(head + 1) * D] = 0.0
    attn.k_proj.weight[_flag_key_rows(model)] = 0.0
    _flag_head_qk(model, pieces)
    vrow = kvh * D + D - 1  # the last value dimension of the flag head's KV head
    attn.v_proj.weight[vrow] = 0.0
    attn.v_proj.weight[vrow, f1] = 1.0
    if attn.v_proj.bias is not None:
        attn.v_proj.bias[vrow] = 0.0
    for h in range(kvh * group, (kvh + 1) * group):  # every query head sharing that value dimension
        attn.o_proj.weight[:, h * D + D - 1] = 0.0
    for other in model.model.layers[:below]:
        other.self_attn.o_proj.weight[f1:CARRIER_CONST + 1] = 0.0
        other.mlp.down_proj.weight[f1:CARRIER_CONST + 1] = 0.0
    attn.o_proj.weight[f2, head * D + D - 1] = gain


def _flag_key_rows(model) -> list:
    cfg = model.config
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    fk = flag_head(model) // (cfg.num_attention_heads // cfg.num_key_value_heads)
    return [fk * D + i + o for i in (*range(FLAG_FREQS), D // 2 - 1) for o in (0, D // 2)]


@torch.no_grad()
def _flag_head_qk(model, pieces) -> None:
    """Score(m, n) = A x_const(m) x_sep(n) [sum_i cos((m - n - 1) theta_i) - FLAG_BIAS]: only separator tokens are
    keys, and only at distance 1 is the bracket positive (8 at distance 1, 6.9 at 0 and 2), so a token whose
    previous token is not a separator attends to non-separators (score 0, flag 0). Gating the key on the flag
    keeps the sign pattern whatever the tokens' norms; a key on the constant did not: tokens whose norm training
    grew lost to rare tokens at aliased distances (54% on the previous token after 60 QA steps, measured). The
    bias rides on the lowest RoPE frequency (position-free at these lengths)."""
    cfg = model.config
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    head = flag_head(model)
    kvh = head // (cfg.num_attention_heads // cfg.num_key_value_heads)
    emb = model.get_input_embeddings().weight
    attn = model.model.layers[0].self_attn
    inv_freq = model.model.rotary_emb.inv_freq.float()
    half = D // 2
    rms = emb.float().pow(2).mean(1).sqrt()
    sep = sorted(separator_ids(pieces))
    c3 = float((emb[:, CARRIER_CONST].float() / rms).mean())
    c1 = float((emb[sep, SEPARATOR_FLAG].float() / rms[sep]).mean())
    a = FLAG_AMP
    for i, bias in (*((i, None) for i in range(FLAG_FREQS)), (half - 1, FLAG_BIAS)):
        th = float(inv_freq[i])
        attn.q_proj.weight[head * D + i, CARRIER_CONST] = a / c3
        attn.q_proj.weight[head * D + i + half, CARRIER_CONST] = 0.0
        if bias is None:
            attn.k_proj.weight[kvh * D + i, SEPARATOR_FLAG] = a * math.cos(th) / c1
            attn.k_proj.weight[kvh * D + i + half, SEPARATOR_FLAG] = a * math.sin(th) / c1
        else:
            attn.k_proj.weight[kvh * D + i, SEPARATOR_FLAG] = -bias * a / c1
            attn.k_proj.weight[kvh * D + i + half, SEPARATOR_FLAG] = 0.0


def refit_carrier(model, pieces, layer: int, seed: int, n_contexts: int = 16) -> dict:
    """Re-plant the flag head's query/key and the fact-start head's probe on the layer input as training has made
    it (the gains follow the embeddings' growing norm). Returns the probe's accuracy and margins."""
    _flag_head_qk(model, pieces)
    return plant_fact_start_head(model, pieces, layer=layer, seed=seed, n_contexts=n_contexts,
                                 features=CARRIER_FEATURES, flag=CARRIER_FLAG)


def carrier_circuit(model, layer: int, head: int = 0, freqs=(9, 10, 11, 12, 13), flag_dims=(28, 29, 30, 31),
                    with_head: bool = True) -> list:
    """(parameter, index) pairs of the planted fact-start circuit -- the flag and constant dimensions of the
    embeddings, the writes of the layers below to them, the flag head's query and its planted key rows and
    value dimension, the input norms on those dimensions, and the fact-start head's planted query/key rows (with
    their RoPE partners; not with ``with_head=False``: before it is planted) -- and nothing else, so that holding
    them through early QA training leaves the rest of the model free to learn. Not the shipped previous-token head:
    held while the other embedding dimensions grow, its constant's share of the normalised input shrinks and the
    head with it (measured: the induction warm-up reached 23% copy accuracy instead of 92%)."""
    cfg = model.config
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    every, flags = slice(None), slice(SEPARATOR_FLAG, CARRIER_CONST + 1)
    l0, lc = model.model.layers[0], model.model.layers[layer]
    fh = flag_head(model)
    fk = fh // group
    out = [(model.get_input_embeddings().weight, (every, flags)),
           (l0.self_attn.q_proj.weight, slice(fh * D, (fh + 1) * D)),
           (l0.self_attn.k_proj.weight, _flag_key_rows(model)),
           (l0.self_attn.v_proj.weight, fk * D + D - 1)]
    out += [(m.weight, flags) for lyr in model.model.layers[:layer] for m in (lyr.self_attn.o_proj, lyr.mlp.down_proj)]
    out += [(lyr.input_layernorm.weight, flags) for lyr in model.model.layers[:layer + 1]]
    if with_head:
        rows = [i for d in (*freqs, *flag_dims) for i in (d, d + D // 2)]
        kvh = head // group
        out += [(lc.self_attn.q_proj.weight, [head * D + r for r in rows]),
                (lc.self_attn.k_proj.weight, [kvh * D + r for r in rows])]
    return out
