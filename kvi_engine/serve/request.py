"""A request as the scheduler sees it: prompt tokens, the capsules injected into it, the bank snapshot it is pinned
to, its sampling parameters, and one :class:`Choice` per OpenAI ``n``. The scheduler thread writes; the HTTP side
reads events from an asyncio queue the scheduler feeds thread-safely."""
from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

_ids = itertools.count()


@dataclass(slots=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(slots=True)
class Choice:
    index: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""           # decoded, stop sequences cut
    sent: int = 0            # characters of ``text`` already streamed
    finish_reason: str | None = None
    attribution: list = field(default_factory=list)  # per generated token: [layers, 1 + capsules] masses
    generator: object = None  # torch.Generator for seeded sampling


@dataclass(slots=True, eq=False)
class Request:
    prompt_ids: list[int]
    capsule_ids: list[int]
    bank: object                      # the KVBank snapshot the request sees from start to end
    params: SamplingParams
    attribution: bool = False
    id: str = field(default_factory=lambda: f"kvi-{next(_ids)}")
    created: float = field(default_factory=time.time)
    t_submit: float = field(default_factory=time.perf_counter)
    t_first: float | None = None
    t_done: float | None = None
    choices: list[Choice] = field(default_factory=list)
    cancelled: bool = False
    error: str | None = None
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue | None = None

    def __post_init__(self):
        if not self.choices:
            self.choices = [Choice(i) for i in range(self.params.n)]

    @property
    def done(self) -> bool:
        return self.error is not None or all(c.finish_reason is not None for c in self.choices)

    def emit(self, event: tuple) -> None:
        """Hand ``event`` to the HTTP side (from the scheduler thread)."""
        if self.loop is not None and self.events is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    @property
    def ttft_s(self) -> float | None:
        return None if self.t_first is None else self.t_first - self.t_submit
