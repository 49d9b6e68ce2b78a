"""What the vLLM tests share: the reference (kvi.inject on HF, same weights), running requests through vLLM, and
comparing the two."""
from __future__ import annotations

import json
from pathlib import Path

import torch

import kvi_engine as kvi

TOL = 1e-4      # |logprob(vLLM) - logprob(kvi.inject)| of every generated token
STEPS = 8
BLOCK = 32      # vLLM CPU attention: block size a multiple of 32
ONE, EIGHT = [3], [4, 0, 7, 2, 9, 1, 11, 5]
PROMPTS = ["Which disease does SFTSV cause, and how is it spread?",
           "Question: where is Mira Vance from? Answer:",
           "Context: the institute was founded by whom?"]


def _greedy(model, prompt, steps) -> tuple[list[int], list[float]]:
    """Greedy tokens and their logprobs, a full forward per step: no cache to get wrong."""
    seq, toks, lps = list(prompt), [], []
    with torch.no_grad():
        for _ in range(steps):
            lp = model(input_ids=torch.tensor([seq])).logits[0, -1].float().log_softmax(-1)
            t = int(lp.argmax())
            toks.append(t)
            lps.append(float(lp[t]))
            seq.append(t)
    return toks, lps


def hf_greedy(model, bank, ids, prompt, steps=STEPS) -> tuple[list[int], list[float]]:
    """Greedy tokens and their logprobs under ``kvi.inject``."""
    with kvi.inject(model, bank, [list(ids)]):
        return _greedy(model, prompt, steps)


def hf_plain_greedy(model, prompt, steps=STEPS) -> tuple[list[int], list[float]]:
    """The same without injection: what vLLM computes for a plain prompt."""
    return _greedy(model, prompt, steps)


def run_vllm(llm, prompts, params) -> list[dict]:
    """Outputs of ``llm.generate`` as plain dicts: tokens, their logprobs, cached tokens, finish reason, receipt."""
    outs = llm.generate(prompts, params, use_tqdm=False)
    res = []
    for o in outs:
        c = o.outputs[0]
        toks = list(c.token_ids)
        lps = [float(step[t].logprob) for step, t in zip(c.logprobs or [], toks)]
        res.append({"req_id": o.request_id, "tokens": toks, "logprobs": lps, "cached": o.num_cached_tokens or 0,
                    "finish": c.finish_reason, "receipt": (o.kv_transfer_params or {}).get("kvi")})
    return res


def greedy_params(**kw) -> dict:
    return dict(temperature=0.0, max_tokens=STEPS, logprobs=1, ignore_eos=True) | kw


def max_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b), f"{len(a)} logprobs vs {len(b)}"
    return max(abs(x - y) for x, y in zip(a, b))


DIFFS: list[tuple[float, str]] = []  # every comparison's largest logprob difference (printed after the run)


def assert_same(got: dict, want_toks: list[int], want_lps: list[float], what: str) -> float:
    """Greedy tokens identical and logprobs within :data:`TOL`; returns the largest logprob difference."""
    assert got["finish"] != "error", f"{what}: vLLM failed the request"
    assert got["tokens"] == want_toks, f"{what}: tokens {got['tokens']} != kvi.inject's {want_toks}"
    d = max_diff(got["logprobs"], want_lps)
    DIFFS.append((d, what))
    assert d < TOL, f"{what}: logprobs differ by {d:.3g} (bound {TOL})"
    return d


class Trace:
    """The connector's writes (its ``trace_file``: one JSON line per write), matched to outputs by request id
    (vLLM's engine suffixes ids: "12" -> "12-b095ebf5")."""

    def __init__(self, path: Path):
        self.path = path

    def take(self) -> list[dict]:
        rows = [json.loads(x) for x in self.path.read_text().splitlines()] if self.path.exists() else []
        self.path.unlink(missing_ok=True)
        return rows

    @staticmethod
    def of(rows: list[dict], req_id: str, kind: str = "start") -> list[dict]:
        """``req_id``'s writes (``kind="start"``) or failures (``kind="error"``)."""
        return [w for w in rows if kind in w and (w["req_id"] == req_id or w["req_id"].startswith(req_id + "-"))]
