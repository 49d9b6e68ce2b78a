"""build_plan against a capsule-by-capsule construction of the slot table (the layouts' definitions, written out)."""
import random
from types import SimpleNamespace

import pytest
import torch

from kvi_engine.plan.plan import build_plan


class FakeBank:
    """What build_plan reads of a bank: ranges, layers, prefix length and the id check."""

    def __init__(self, lengths, num_layers=3, prefix_len=1):
        starts = torch.tensor([0] + lengths[:-1]).cumsum(0)
        self.ranges = torch.stack([starts, torch.tensor(lengths)], 1)
        self.num_layers, self.prefix_len = num_layers, prefix_len
        self.shape = SimpleNamespace(num_layers=num_layers)

    def _check_id(self, c):
        if not 0 <= c < len(self.ranges):
            raise IndexError(f"capsule id {c} out of range")
        return c


def expected(bank, rows, layout, layers, capsule_layers):
    L, p = bank.num_layers, bank.prefix_len
    default = set(range(L)) if layers is None else set(layers)
    width = max([sum(int(bank.ranges[c, 1]) for c in row) for row in rows] + [0])
    tok, pos = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width, dtype=torch.long)
    valid, lvalid = torch.zeros(len(rows), width, dtype=torch.bool), torch.ones(L, len(rows), width, dtype=torch.bool)
    offsets, cpos = [], []
    for r, row in enumerate(rows):
        slot, start, longest = 0, p, 0
        for c in row:
            s0, n = (int(x) for x in bank.ranges[c])
            cpos.append(start)
            for i in range(n):
                tok[r, slot], pos[r, slot], valid[r, slot] = s0 + i, start + i, True
                for layer in range(L):
                    lvalid[layer, r, slot] = layer in set(capsule_layers.get(c, default))
                slot += 1
            longest = max(longest, n)
            if layout == "stacked":
                start += n
        offsets.append(start if layout == "stacked" else p + longest)
    return tok, pos, valid, lvalid, offsets, cpos


@pytest.mark.parametrize("layout", ["stacked", "parallel"])
@pytest.mark.parametrize("masks", [False, True])
def test_build_plan_matches_definition(layout, masks):
    rng = random.Random(3)
    bank = FakeBank([rng.randint(1, 9) for _ in range(40)], prefix_len=2)
    rows = [rng.sample(range(40), rng.randint(0, 12)) for _ in range(17)] + [[]]
    layers = [0, 2] if masks else None
    capsule_layers = {rows[0][0]: [1], rows[1][1]: (0, 2)} if masks else {}
    plan = build_plan(bank, rows, layout=layout, layers=layers, capsule_layers=capsule_layers or None)
    tok, pos, valid, lvalid, offsets, cpos = expected(
        bank, rows, layout, layers, {c: list(range(*s)) if isinstance(s, tuple) else s for c, s in capsule_layers.items()})
    assert torch.equal(plan.valid, valid)
    assert torch.equal(plan.token_index[valid], tok[valid]) and torch.equal(plan.positions[valid], pos[valid])
    assert plan.prompt_offset.tolist() == offsets
    assert plan.capsule_ids == rows
    # each capsule starts at its position of the definition: the position of its first slot
    firsts = [int(plan.positions[r, slot]) for r, row in enumerate(rows)
              for slot in (torch.tensor([0] + [int(bank.ranges[c, 1]) for c in row]).cumsum(0)[:-1].tolist())]
    assert firsts == cpos
    if masks:
        assert torch.equal(plan.layer_valid & valid, lvalid & valid)
    else:
        assert plan.layer_valid is None


def test_build_plan_rejects_bad_rows():
    bank = FakeBank([3, 4, 5])
    with pytest.raises(IndexError, match=r"capsule_ids\[1\]"):
        build_plan(bank, [[0], [7]])
    with pytest.raises(ValueError, match="twice"):
        build_plan(bank, [[1, 1]])
    with pytest.raises(ValueError, match="layer 5 out of range"):
        build_plan(bank, [[0]], layers=[5])
