"""Timing helpers shared by the benchmarks: round-robin order, paired ratios, best-of, resident memory.

This VM's speed drifts by 5-10% within seconds, so methods compared in one run are timed round-robin (the order
reversed every other round, so none always runs first or last) and ratios are taken per round, between runs a few
hundred ms apart, then the median (robust to drift between rounds).
"""
from __future__ import annotations

import ctypes
import os
import statistics
import threading
import time
from dataclasses import dataclass


def round_robin(names, repeats: int):
    """Each round's order: ``names``, reversed every other round, so no method always runs first or last."""
    names = list(names)
    for i in range(repeats):
        yield names if i % 2 == 0 else names[::-1]


def paired_ratio(times, base) -> float:
    """Median over rounds of ``times[i] / base[i]``: robust to the machine's speed drifting between rounds."""
    return statistics.median(t / b for t, b in zip(times, base))


def timed_interleaved(runs: dict, repeats: int, warmup: int = 1, clock=time.perf_counter) -> dict[str, list[float]]:
    """Seconds of every call of every run, round-robin over the runs each repeat (after ``warmup`` rounds)."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    times = {name: [] for name in runs}
    for order in round_robin(runs, repeats):
        for name in order:
            t0 = clock()
            runs[name]()
            times[name].append(clock() - t0)
    return times


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


class PeakRSS:
    """Peak RSS increase over the start, sampled in a thread (``/proc/self/statm``, Linux)."""

    def __init__(self, interval: float = 0.001):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.base = self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20
