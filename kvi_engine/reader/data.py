"""Token sequences, attention masks and labels for the reader's training and its teacher-forced evaluation.

One *example* is a context followed by several question/answer *branches*. Every branch attends to the whole
context and causally to itself, never to another branch, and starts at the same position (right after the
context): each QA is exactly what a single-question prompt would see, but the context is computed once.

Context formats:
  rag   [BOS] "Context:\\n- f1\\n- f2\\n"   + "Question: q\\nAnswer:" + " a" EOS     (kvi qa_prompt, RAG)
  doc   [BOS] " f1 f2 ..."              + " Question: q\\nAnswer:" + " a" EOS     (facts as running text)
  kvi   [BOS] [f1] [f2] ...             + " Question: q\\nAnswer:" + " a" EOS     capsules: block-diagonal
        (each fact attends to BOS and itself; the tokens are identical to "doc": only the mask differs --
        exactly what kvi.inject computes with the stacked layout)
  llm   [BOS]                           + " Question: q\\nAnswer:" + " a" EOS     (no facts)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kvi_engine.reader.tokenizer import Pieces

FORMATS = ("rag", "doc", "kvi", "llm")


@dataclass
class Example:
    ctx: list            # context token ids (BOS first)
    block: list          # per context token: -1 shared (BOS), else block id (all 0 for causal formats)
    pos: list            # per context token position
    hidden: list         # per context token: True = not visible to the question branches (BOS copies)
    ctx_end: int         # position of the first question token
    branches: list       # [(ids, label_weight list)]: ids of "Question: ...Answer: a</s>", weight per token
    answers: list        # gold answer text per branch
    hops: list
    n_facts: int
    fmt: str


def encode(pieces: Pieces, facts, qas, fmt: str, q_weight: float = 0.0, ctx_weight: float = 0.0) -> Example:
    bos = pieces.bos
    pos = hidden = None
    ctx_end = None
    if fmt == "rag":
        body = pieces.start(["Context:\n" + "".join(f"- {f}\n" for f in facts)])[0] if facts else []
        ctx, block = [bos] + body, [-1] + [0] * len(body)
        qtexts = [f"Question: {q.question}\nAnswer:" for q in qas] if facts else None
    elif fmt == "doc":
        body = pieces.start([" ".join(facts)])[0] if facts else []
        ctx, block = [bos] + body, [-1] + [0] * len(body)
        qtexts = None
    elif fmt.startswith("kvi"):
        # variants for the analysis: kvi[:sharedbos|:nobos][:nospace][:chunkK][:parallel]
        opts = fmt.split(":")[1:]
        bos_mode = "shared" if "sharedbos" in opts else "none" if "nobos" in opts else "copy"
        chunk = next((int(o[5:]) for o in opts if o.startswith("chunk")), 1)
        parallel = "parallel" in opts
        texts = [" ".join(facts[i:i + chunk]) for i in range(0, len(facts), chunk)]
        enc = (pieces.cont(texts) if "nospace" in opts else pieces.start(texts)) if facts else []
        if bos_mode == "none":
            ctx, block, pos, hidden, p = [], [], [], [], 0
        else:
            ctx, block, pos, hidden, p = [bos], [-3 if bos_mode == "copy" else -1], [0], [False], 1
        start, end = p, p
        for k, ids in enumerate(enc):
            q0 = start if parallel else p
            if bos_mode == "copy":
                ctx += [bos]
                block += [k]
                pos += [q0 - 1]
                hidden += [True]
            ctx += ids
            block += [k] * len(ids)
            pos += list(range(q0, q0 + len(ids)))
            hidden += [False] * len(ids)
            p = q0 + len(ids)
            end = max(end, p)
        qtexts = None
        if not ctx:
            raise ValueError("kvi:nobos needs facts")
        ctx_end = end
    elif fmt in ("rag:nobos", "doc:nobos"):
        body = pieces.start(["Context:\n" + "".join(f"- {f}\n" for f in facts)] if fmt == "rag:nobos"
                            else [" ".join(facts)])[0]
        ctx, block = body, [0] * len(body)
        qtexts = [f"Question: {q.question}\nAnswer:" for q in qas] if fmt == "rag:nobos" else None
    elif fmt == "llm":
        ctx, block = [bos], [-1]
        qtexts = None
    elif fmt == "copy":  # induction warm-up: the facts as running text, then repeated in another order
        body = pieces.start([" ".join(facts)])[0]
        ctx, block = [bos] + body, [-1] + [0] * len(body)
        import random as _r
        shuf = list(facts)
        _r.Random(len(body)).shuffle(shuf)
        qi = pieces.cont([" Repeat:"])[0]
        ai = pieces.cont([" " + " ".join(shuf)])[0]
        ex = Example(ctx, block, list(range(len(ctx))), [False] * len(ctx), len(ctx),
                     [(qi + ai + [pieces.eos], [q_weight] * (len(qi) - 1) + [1.0] * (len(ai) + 1), len(ai) + 1)],
                     [" ".join(shuf)], [0], len(facts), fmt)
        ex.ctx_weight = ctx_weight
        return ex
    else:
        raise ValueError(fmt)
    if qtexts is None:  # the question is the first text after the facts or after BOS: prefix space
        q_ids = pieces.start([f"Question: {q.question}\nAnswer:" for q in qas])
    else:
        q_ids = pieces.cont(qtexts)
    a_ids = pieces.cont([" " + q.answer for q in qas])
    branches = []
    for qi, ai in zip(q_ids, a_ids):
        ids = qi + ai + [pieces.eos]
        # weight of predicting token t (label at position t-1): question tokens q_weight, answer+EOS 1
        w = [q_weight] * (len(qi) - 1) + [1.0] * (len(ai) + 1)
        branches.append((ids, w, len(ai) + 1))
    if pos is None:
        pos, hidden = list(range(len(ctx))), [False] * len(ctx)
    if ctx_end is None:
        ctx_end = pos[-1] + 1
    ex = Example(ctx, block, pos, hidden, ctx_end, branches, [q.answer for q in qas], [q.hops for q in qas],
                 len(facts), fmt)
    ex.ctx_weight = ctx_weight
    return ex


def collate(examples: list[Example], pad_id: int):
    """input_ids [B,T], position_ids [B,T], bool mask [B,1,T,T] (True = attend), label ids and weights [B,T]
    (the label at position t is the token at t+1), answer spans for teacher-forced EM."""
    rows = []
    for ex in examples:
        ids, pos, seg, blk, lab, wt = list(ex.ctx), list(ex.pos), [-1] * len(ex.ctx), list(ex.block), \
            [-100] * len(ex.ctx), [0.0] * len(ex.ctx)
        cw = getattr(ex, "ctx_weight", 0.0)
        if cw:  # language-model loss on the facts: next token within the same block, never a (hidden) BOS
            for t in range(len(ex.ctx) - 1):
                if ex.block[t + 1] == ex.block[t] and not ex.hidden[t + 1] and ex.block[t] >= 0:
                    lab[t], wt[t] = ex.ctx[t + 1], cw
        hid = list(ex.hidden)
        C = ex.ctx_end  # first position after the context
        spans = []
        for b, (bids, w, n_ans) in enumerate(ex.branches):
            start = len(ids)
            # position t predicts token t+1 within the branch; the first branch token is predicted from the
            # context's last token only for the first branch in a plain prompt -- we never train on it.
            ids += bids
            pos += list(range(C, C + len(bids)))
            seg += [b] * len(bids)
            blk += [0] * len(bids)
            hid += [False] * len(bids)
            lab += bids[1:] + [-100]
            wt += w + [0.0]
            spans.append((start + len(bids) - 1 - n_ans, n_ans))  # positions whose labels are the answer + EOS
        rows.append((ids, pos, seg, blk, lab, wt, spans, hid))
    T = max(len(r[0]) for r in rows)
    B = len(rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    seg = torch.full((B, T), -2, dtype=torch.long)
    blk = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    weights = torch.zeros((B, T))
    hidden = torch.zeros((B, T), dtype=torch.bool)
    for i, (ids, pos, sg, bk, lab, wt, _, hd) in enumerate(rows):
        n = len(ids)
        input_ids[i, :n] = torch.tensor(ids)
        position_ids[i, :n] = torch.tensor(pos)
        seg[i, :n] = torch.tensor(sg)
        blk[i, :n] = torch.tensor(bk)
        labels[i, :n] = torch.tensor(lab)
        weights[i, :n] = torch.tensor(wt)
        hidden[i, :n] = torch.tensor(hd)
    si, sj = seg.unsqueeze(2), seg.unsqueeze(1)
    bi, bj = blk.unsqueeze(2), blk.unsqueeze(1)
    ar = torch.arange(T)
    causal = (ar.unsqueeze(1) >= ar.unsqueeze(0)).unsqueeze(0)
    i_ctx, j_ctx = si == -1, sj == -1
    blk_ok = (bi == bj) | (bj == -1)
    vis = ~hidden.unsqueeze(1)
    allowed = causal & ((i_ctx & j_ctx & blk_ok) | ((si >= 0) & j_ctx & vis) | ((si >= 0) & (si == sj)))
    allowed |= torch.eye(T, dtype=torch.bool).unsqueeze(0)  # padding rows see themselves (no NaN)
    return {"input_ids": input_ids, "position_ids": position_ids, "mask": allowed.unsqueeze(1),
            "labels": labels, "weights": weights, "spans": [r[6] for r in rows]}


def forward_loss(model, batch, *, return_tf=False, answer_loss=False):
    """Weighted CE over labelled positions (lm_head only there). With ``return_tf``: per-branch teacher-forced
    exact match (every answer token and EOS is the argmax). The batch moves to the model's device."""
    dev = model.lm_head.weight.device
    batch = {k: v.to(dev, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    out = model.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                      attention_mask=batch["mask"], use_cache=False)
    h = out.last_hidden_state
    sel = batch["weights"] > 0
    logits = model.lm_head(h[sel])
    lab = batch["labels"][sel]
    w = batch["weights"][sel]
    ce = torch.nn.functional.cross_entropy(logits.float(), lab, reduction="none")
    loss = (ce * w).sum() / w.sum()
    if answer_loss:
        am = w == 1.0
        return loss, None, float(ce[am].detach().mean()) if am.any() else 0.0
    if not return_tf:
        return loss, None
    pred = torch.full_like(batch["labels"], -1)
    pred[sel] = logits.argmax(-1)
    pred, batch["labels"] = pred.cpu(), batch["labels"].cpu()
    tf = []
    for r, spans in enumerate(batch["spans"]):
        for start, n in spans:
            ok = bool((pred[r, start:start + n] == batch["labels"][r, start:start + n]).all())
            tf.append(ok)
    return loss, tf
