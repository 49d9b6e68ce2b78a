"""Entity linking throughput (MB/s in extra_info): the C++ core vs its Python twin vs pyahocorasick (which does no
word boundaries or normalisation)."""
import random

import numpy as np
import pytest

from kvi_engine.graph.linker import EntityLinker
from kvi_engine.utils.extras import require

NAMES = 20_000


@pytest.fixture(scope="module")
def corpus():
    rng = random.Random(0)
    syll = ["ka", "lo", "mi", "ren", "tor", "vel", "qua", "sit", "an", "bel"]
    names = sorted({" ".join("".join(rng.choices(syll, k=3)).title() for _ in range(rng.randint(1, 3)))
                    for _ in range(NAMES)})
    words = ["the", "of", "and", "was", "in", "founded", "near", "river"]
    texts = [" ".join(rng.choice(names) if rng.random() < 0.25 else rng.choice(words) for _ in range(60)) + "."
             for _ in range(200)]
    return names, texts, sum(len(t.encode()) for t in texts) / 1e6


@pytest.mark.parametrize("backend", ["cpp", "reference", "pyahocorasick"])
def test_link(benchmark, corpus, backend):
    names, texts, mb = corpus
    benchmark.extra_info.update(op="link", backend=backend, names=len(names), text_mb=round(mb, 3))
    if backend == "pyahocorasick":
        ahocorasick = require("ahocorasick", "bench", "the pyahocorasick linking baseline")
        a = ahocorasick.Automaton()
        for i, n in enumerate(names):
            a.add_word(n.lower(), i)
        a.make_automaton()
        result = benchmark(lambda: sum(1 for t in texts for _ in a.iter_long(t.lower())))
    else:
        linker = EntityLinker.build(names, np.arange(len(names), dtype=np.int64), backend=backend)
        result = benchmark(lambda: int(linker.link_arrays(texts, num_threads=1)[0][-1]))
    benchmark.extra_info["mentions"] = result
    benchmark.extra_info["mb_per_s"] = round(mb / benchmark.stats.stats.min, 2)
