"""Contrastive training of a KPR model: InfoNCE over in-batch positives plus hard negatives; the entity table is
frozen (it is an input, not a parameter). With the encoder frozen (the default) the pooled text vectors are computed
once and only the fusion layer trains, so the gain over the base encoder is the entity knowledge alone and an epoch
over a few thousand pairs takes seconds on a CPU. Checkpoints go to ``<out>/checkpoint-<step>``; the loss log to
``<out>/train_log.jsonl`` (one {"step", "epoch", "loss", "lr", "seconds"} per line)."""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kvi_engine.kpr.data import load_corpus, load_pairs
from kvi_engine.kpr.hub import save_kpr
from kvi_engine.utils.atomic import atomic_write_bytes


@dataclass(slots=True)
class TrainConfig:
    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    negatives: int = 1
    scale: float = 20.0
    warmup: float = 0.1
    train_encoder: bool = False
    save_every: int = 0
    max_steps: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.epochs <= 0 or self.batch_size <= 1:
            raise ValueError("epochs must be >= 1 and batch_size >= 2 (in-batch negatives need company)")
        if self.lr <= 0 or self.scale <= 0 or self.negatives < 0:
            raise ValueError("lr and scale must be positive, negatives non-negative")


class _Texts:
    """Features of a fixed text list. Frozen encoder: pooled vectors and entity slots are computed once and a step
    only pads slots and runs the fusion layer; otherwise every step tokenizes and runs the whole model."""

    def __init__(self, model, tokenizer, texts: list[str], cache: bool, max_length: int = 256, chunk: int = 64):
        self.model, self.tokenizer, self.texts, self.max_length = model, tokenizer, texts, max_length
        self.pooled, self.slots = None, []
        if cache:
            pooled = []
            with torch.inference_mode():
                for s in tqdm(range(0, len(texts), chunk), desc="encode (frozen)", leave=False):
                    f = self._features(texts[s:s + chunk])
                    h = model.encoder(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).last_hidden_state
                    pooled.append(model.pool(h, f["attention_mask"]))
                    for e, p, m in zip(f["entity_embeds"], f["entity_position_ids"], f["entity_attention_mask"]):
                        keep = m.bool()
                        self.slots.append((e[keep].clone(), p[keep].clone()))
            self.pooled = torch.cat(pooled)

    def _features(self, texts):
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    def embed(self, idx: list[int]) -> torch.Tensor:
        if self.pooled is None:
            return self.model(**self._features([self.texts[i] for i in idx])).sentence_embedding
        slots = [self.slots[i] for i in idx]
        e = max(len(s[0]) for s in slots)
        m = max((s[1].shape[1] for s in slots if len(s[1])), default=1)
        embeds = torch.zeros(len(idx), e, self.model.config.entity_dim)
        pos = torch.full((len(idx), e, m), -1, dtype=torch.long)
        mask = torch.zeros(len(idx), e, dtype=torch.long)
        for row, (v, p) in enumerate(slots):
            embeds[row, :len(v)] = v
            pos[row, :len(v), :p.shape[1]] = p
            mask[row, :len(v)] = 1
        return self.model.fuse(self.pooled[idx], embeds, pos, mask)


def train(model, tokenizer, train_path, corpus_path, out_dir, cfg: TrainConfig) -> list[dict]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(corpus_path)
    pairs = load_pairs(train_path, corpus)
    pid_index = {pid: i for i, pid in enumerate(corpus)}
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)

    for p in model.encoder.parameters():
        p.requires_grad_(cfg.train_encoder)
    params = [p for p in model.parameters() if p.requires_grad]
    queries = _Texts(model, tokenizer, [q for q, _, _ in pairs], cache=not cfg.train_encoder)
    passages = _Texts(model, tokenizer, list(corpus.values()), cache=not cfg.train_encoder)
    threads = torch.get_num_threads()
    if not cfg.train_encoder:
        # measured on the shared 2-core machine: a fusion-only step took 2-3 s with 2 threads, 0.25 s with one
        torch.set_num_threads(1)
    model.train()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    steps_per_epoch = len(pairs) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs if not cfg.max_steps else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    warm = max(1, int(cfg.warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    log, step, t0 = [], 0, time.time()
    bar = tqdm(total=total, desc="train kpr")
    while step < total:
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for s in range(0, steps_per_epoch * cfg.batch_size, cfg.batch_size):
            if step >= total:
                break
            batch = [pairs[i] for i in order[s:s + cfg.batch_size]]
            pos = [pid_index[p] for _, p, _ in batch]
            negs = [pid_index[n] for _, _, ns in batch for n in rng.sample(ns, min(cfg.negatives, len(ns)))]
            q = queries.embed(order[s:s + cfg.batch_size])
            d = passages.embed(pos + negs)
            scores = cfg.scale * q @ d.T
            loss = torch.nn.functional.cross_entropy(scores, torch.arange(len(batch)))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            log.append({"step": step, "epoch": step / steps_per_epoch, "loss": round(loss.item(), 5),
                        "lr": sched.get_last_lr()[0], "seconds": round(time.time() - t0, 2)})
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if cfg.save_every and step % cfg.save_every == 0:
                _save(model, tokenizer, out_dir / f"checkpoint-{step}", log, cfg)
    bar.close()
    torch.set_num_threads(threads)
    _save(model, tokenizer, out_dir, log, cfg)
    return log


def _save(model, tokenizer, directory: Path, log: list[dict], cfg: TrainConfig) -> None:
    model.eval()
    save_kpr(model, tokenizer, directory)
    atomic_write_bytes(directory / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in log).encode())
    atomic_write_bytes(directory / "train_config.json", (json.dumps(asdict(cfg), indent=2) + "\n").encode())
    model.train()
