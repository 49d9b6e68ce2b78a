"""Structured initialisation: plant a previous-token attention head in layer 0 of a fresh Llama/Qwen2 model.

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
