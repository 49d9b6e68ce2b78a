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
    xs, ys = [], []
    for k in range(n_contexts):
        c = g.context(rng.choice([2, 4, 8, 16]), 1)
        ex = encode(pieces, c.facts, c.questions, ("rag", "doc", "kvi")[k % 3])
        b = collate([ex], pieces.pad)
        dev = model.lm_head.weight.device
        out = model.model(input_ids=b["input_ids"].to(dev), position_ids=b["position_ids"].to(dev),
                          attention_mask=b["mask"].to(dev), output_hidden_states=True, use_cache=False)
        x = model.model.layers[layer].input_layernorm(out.hidden_states[layer])[0].float().cpu()
        ids = b["input_ids"][0].tolist()
        for t in range(len(ex.ctx)):  # BOS and the capsules' BOS copies are keys too, never a fact's first token
            xs.append(x[t])
            ys.append(float(t > 0 and not ex.hidden[t] and ids[t - 1] in sep and ids[t] not in sep))
    return torch.stack(xs), torch.tensor(ys)


@torch.no_grad()
def plant_fact_start_head(model, pieces, layer: int, head: int = 0, flag: float = 14.0, recency: float = 20.0,
                          freqs=(9, 10, 11, 12, 13), flag_dims=(28, 29, 30, 31), n_contexts: int = 48,
                          seed: int = 0) -> dict:
    """Set ``head`` of ``layer`` so that every token attends to the first token of its own fact and copies it.

    Score(m, n) = flag * start(n) + recency * mean_i cos(theta_i (m - n)): ``start`` is a linear probe of the layer
    input (ridge least squares on generated contexts), read by the key on near-zero RoPE frequencies (position-free)
    against a query that reads a direction constant on every token; the recency term is RoPE-shaped (query and key
    both constant on mid frequencies), so the most recent fact start wins. The value/output map is the projection
    onto the head's value rows (o = pinv(V)). Needs a layer whose input already knows the previous token (layer 1 of
    a model whose layer 0 has the planted previous-token head is too weak on the trained reader -- 95% probe
    accuracy; layer 2 is exact). Returns the probe's accuracy and margins."""
    cfg = model.config
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kvh = head // (cfg.num_attention_heads // cfg.num_key_value_heads)
    X, y = _layer_inputs(model, pieces, layer, n_contexts, seed)
    eye = 1e-2 * torch.eye(X.shape[1] + 1)
    Xa = torch.cat([X, torch.ones(len(X), 1)], 1)
    w = torch.linalg.solve(Xa.T @ Xa + eye, Xa.T @ y)
    u = torch.linalg.solve(X.T @ X + eye[:-1, :-1], X.T @ torch.ones(len(X)))  # u.x ~ 1 on every token
    wk = w[:-1] + w[-1] * u  # the probe's bias rides on the constant direction
    p = Xa @ w
    dev = model.lm_head.weight.device
    u, wk = u.to(dev), wk.to(dev)
    attn = model.model.layers[layer].self_attn
    qs, ks = slice(head * D, (head + 1) * D), slice(kvh * D, (kvh + 1) * D)
    attn.q_proj.weight[qs] = 0.0
    attn.k_proj.weight[ks] = 0.0
    for dims, gain, key in ((flag_dims, flag, wk), (freqs, recency, u)):
        a = (gain / len(dims)) ** 0.5
        for i in dims:  # dim i pairs with i + D/2 under RoPE; leaving the partner at 0 gives q_i k_i cos(theta_i d)
            attn.q_proj.weight[head * D + i] = a * u * D ** 0.5  # HF divides scores by sqrt(D)
            attn.k_proj.weight[kvh * D + i] = a * key
    for b, sl in (("q_proj", qs), ("k_proj", ks)):
        if getattr(attn, b).bias is not None:
            getattr(attn, b).bias[sl] = 0.0
    attn.o_proj.weight[:, qs] = torch.linalg.pinv(attn.v_proj.weight[ks].float().cpu()).to(attn.o_proj.weight)
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
