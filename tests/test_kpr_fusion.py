"""The fusion layer against a plain per-row, per-item PyTorch reference."""
import math

import pytest
import torch

from kvi_engine.kpr.fusion import EntityFusion


def reference(f: EntityFusion, pooled, embeds, positions, mask):
    """Loops over rows, heads and items; no batching, no masking tricks."""
    out = []
    for b in range(pooled.shape[0]):
        h = pooled[b]
        items = [f.noop]
        for e in range(embeds.shape[1]):
            if not mask[b, e]:
                continue
            pos = [int(p) for p in positions[b, e] if p >= 0]
            span = torch.stack([f.position_embeddings.weight[p] for p in pos]).mean(0)
            items.append(f.entity_norm(f.entity_proj(embeds[b, e]) + span))
        n = len(items)
        attended = []
        for head in range(f.num_heads):
            sl = slice(head * f.head_dim, (head + 1) * f.head_dim)
            q = f.q_proj(h)[sl]
            scores = torch.stack([q @ f.k_proj(x)[sl] / math.sqrt(f.head_dim) for x in items])
            if f.attention == "sigmoid":
                w = torch.sigmoid(scores - math.log(n))
            else:
                w = torch.softmax(scores, 0)
            attended.append(sum(w[i] * f.v_proj(items[i])[sl] for i in range(n)))
        out.append(f.out_norm(h + f.o_proj(torch.cat(attended))))
    return torch.stack(out)


def allclose(actual, expected, atol=1e-5):
    diff = (actual - expected).abs()
    assert diff.max() <= atol, f"max |diff| {diff.max():.3g} at {tuple(int(i) for i in (diff == diff.max()).nonzero()[0])}"


@pytest.mark.parametrize("attention", ["sigmoid", "softmax"])
@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("batch,entities,span", [(1, 0, 1), (5, 3, 2), (17, 7, 5)])
def test_fusion_matches_reference(attention, heads, batch, entities, span):
    torch.manual_seed(batch * 31 + entities)
    f = EntityFusion(hidden_size=24, entity_dim=10, max_positions=53, num_heads=heads, attention=attention).eval()
    with torch.no_grad():
        for p in f.parameters():
            p.normal_(0, 0.3)
    pooled = torch.randn(batch, 24)
    embeds = torch.randn(batch, entities, 10)
    positions = torch.randint(0, 53, (batch, entities, span))
    positions[:, :, 1:][torch.rand(batch, entities, span - 1) < 0.4] = -1  # ragged spans
    mask = (torch.rand(batch, entities) < 0.7).long()
    if batch > 1:
        mask[0] = 0  # a row whose entities are all padding attends to the no-op alone
    with torch.no_grad():
        allclose(f(pooled, embeds, positions, mask), reference(f, pooled, embeds, positions, mask))


def test_padding_slots_are_ignored():
    torch.manual_seed(0)
    f = EntityFusion(16, 8, 32, attention="sigmoid").eval()
    with torch.no_grad():
        f.o_proj.weight.normal_(0, 0.5)
    pooled, embeds, positions = torch.randn(2, 16), torch.randn(2, 3, 8), torch.randint(0, 32, (2, 3, 2))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    base = f(pooled, embeds, positions, mask)
    embeds2, positions2 = embeds.clone(), positions.clone()
    embeds2[mask == 0] = 1e3
    positions2[mask == 0] = 5
    allclose(f(pooled, embeds2, positions2, mask), base)
    allclose(f(pooled, embeds[:, :2], positions[:, :2], mask[:, :2]), base)
