"""Time-to-first-token of LLM vs RAG vs KVI, measured side by side on the same model, prompts and dtype.

Work is built at the token level so the comparison is exact: RAG puts the very statement tokens KVI injects in
front of the prompt; LLM sees the prompt alone. TTFT = request in hand -> first token chosen: for KVI it includes
building the injection plan and gathering capsules from the bank, every time. Methods are timed round-robin. Two
ratios to LLM are reported: of each method's fastest repeat (the least disturbed by other load), and the median over
repeats of the paired ratio (a method's run over the LLM run of the same round, a few hundred ms apart), which is
robust to the machine's speed drifting during the measurement.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kvi_engine.bank import KVBank
from kvi_engine.capsules import Capsule
from kvi_engine.inject import inject

METHODS = ("llm", "rag", "kvi")
_PLACES = ["Kestrel Bay", "Tamsk", "Orrin Vale", "Saltmarsh", "Halden Ridge", "Corvo", "Ilmen", "Brightwater"]


def synthetic_capsules(n: int) -> list[Capsule]:
    """``n`` distinct short capsules (~14 tokens with the tiny bench tokenizer), deterministic."""
    rels = ["located_in", "produces", "works_for", "member_of"]
    return [Capsule(f"Station {i}", rels[i % len(rels)], _PLACES[(i * 7) % len(_PLACES)]) for i in range(n)]


@dataclass(slots=True)
class TTFTRow:
    method: str
    capsules: int
    batch: int
    prompt_tokens: int
    knowledge_tokens: int
    ttft_ms: float
    ttft_ms_min: float
    ratio_to_llm: float = float("nan")
    ratio_paired: float = float("nan")


def _first_token(model, ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, use_cache=True)
    return out.logits[:, -1].argmax(-1)


def round_robin(names, repeats: int):
    """Each round's order: ``names``, reversed every other round, so no method always runs first or last."""
    names = list(names)
    for i in range(repeats):
        yield names if i % 2 == 0 else names[::-1]


def paired_ratio(times, base) -> float:
    """Median over rounds of ``times[i] / base[i]``: robust to the machine's speed drifting between rounds."""
    return statistics.median(t / b for t, b in zip(times, base))


def _timed_interleaved(runs: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Round-robin over the methods each repeat, so load from other processes hits every method alike."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    times = {name: [] for name in runs}
    for order in round_robin(runs, repeats):
        for name in order:
            fn = runs[name]
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


@torch.no_grad()
def measure_ttft(model, bank: KVBank, prompt_ids: list[int], capsule_ids: list[int], *, batch: int = 1,
                 repeats: int = 5, warmup: int = 1, methods=METHODS) -> list[TTFTRow]:
    device = next(model.parameters()).device
    prefix = bank.prefix_token_ids
    body = prompt_ids[len(prefix):] if prompt_ids[:len(prefix)] == prefix else list(prompt_ids)
    knowledge = [t for c in capsule_ids for t in bank.token_ids(c)]
    # One shared prefix (BOS) for every method: LLM [p, prompt], RAG [p, knowledge, prompt], KVI [prompt] with p
    # and the knowledge injected.
    prompt = torch.tensor([prefix + body] * batch, device=device)
    rag = torch.tensor([prefix + knowledge + body] * batch, device=device)
    kvi_prompt = torch.tensor([body] * batch, device=device)

    def kvi():
        with inject(model, bank, [capsule_ids] * batch, check=False):
            _first_token(model, kvi_prompt)

    runs = {"llm": lambda: _first_token(model, prompt), "rag": lambda: _first_token(model, rag), "kvi": kvi}
    times = _timed_interleaved({m: runs[m] for m in methods}, repeats, warmup)
    rows = [TTFTRow(name, len(capsule_ids), batch, len(prompt_ids), 0 if name == "llm" else len(knowledge),
                    1e3 * statistics.median(t), 1e3 * min(t)) for name, t in times.items()]
    llm = next((r.ttft_ms_min for r in rows if r.method == "llm"), None)
    for r in rows:  # ratios of the minima: the least disturbed run of each method on a shared machine
        r.ratio_to_llm = r.ttft_ms_min / llm if llm else float("nan")
        if "llm" in times:
            r.ratio_paired = paired_ratio(times[r.method], times["llm"])
    return rows


@dataclass(slots=True)
class BenchRow:
    """One measurement of a native-core benchmark: ``value`` from the best wall time, ``per_cpu`` from the best
    process CPU time (all threads), which other jobs on a shared machine disturb less."""
    bench: str
    impl: str
    value: float
    per_cpu: float
    unit: str
    detail: str = ""


def best_of(fn, repeats: int) -> tuple[float, float, object]:
    """(best wall seconds, best process-CPU seconds, the last result) over ``repeats`` calls of ``fn``."""
    wall, cpu, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu), out


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return {"machine": platform.machine(), "processor": _cpu_name(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "commit": commit, "unix_time": time.time()}


def write_results(rows: list, path: str | os.PathLike, **meta) -> None:
    """JSON with machine + commit, and a CSV of the rows next to it."""
    from kvi_engine.atomic import atomic_open

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dicts = [asdict(r) if hasattr(r, "__dataclass_fields__") else dict(r) for r in rows]
    with atomic_open(path.with_suffix(".json"), "w") as f:
        json.dump({"machine": machine_info(), **meta, "rows": dicts}, f, indent=1)
    if dicts:
        with atomic_open(path.with_suffix(".csv"), "w") as f:
            f.write(",".join(dicts[0]) + "\n")
            for d in dicts:
                f.write(",".join(str(v) for v in d.values()) + "\n")


def format_table(rows: list, columns: list[str]) -> str:
    cells = [[c for c in columns]] + [[f"{getattr(r, c):.2f}" if isinstance(getattr(r, c), float)
                                       else str(getattr(r, c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [" | ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
