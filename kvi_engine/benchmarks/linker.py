"""Entity linker throughput (c) and build cost (d): C++ core vs its Python twin vs pyahocorasick, with a
dictionary of ~1M synthetic aliases and a synthetic corpus in which about a quarter of the tokens are names.

    kvi bench linker                  # 1M aliases, 4 MB of text
    kvi bench linker --names 100000   # quicker

pyahocorasick is given lower-cased text and reports every (overlapping) occurrence, or with iter_long the
longest non-overlapping ones, in both cases without word boundaries or Unicode normalisation; the linker does
NFKC + case folding + punctuation folding, enforces word boundaries and returns all candidates with priors.
Writes bench/results/linker.{json,csv} (machine, commit, rows) and prints the table.
"""
from __future__ import annotations

import argparse
import os
import random

import numpy as np

from kvi_engine.benchmarks import results
from kvi_engine.benchmarks.timing import BenchRow as Row
from kvi_engine.benchmarks.timing import best_of, rss_mb
from kvi_engine.graph.linker import EntityLinker
from kvi_engine.graph.normalize import native_normalizer
from kvi_engine.utils.extras import require


def vocabulary(r: random.Random, size: int) -> list[str]:
    syll = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["qu", "th", "sh", "ch", "ei", "ou"]
    words = set()
    while len(words) < size:
        words.add("".join(r.choices(syll, k=r.randint(2, 4))))
    return sorted(words)


def corpus(r: random.Random, words, names, target_bytes: int, text_bytes: int = 1000) -> list[str]:
    """Texts of ~text_bytes; a quarter of the tokens are names (Zipf-popular), some capitalised or upper-cased,
    some followed by punctuation."""
    cum = np.cumsum(1.0 / np.arange(1, len(names) + 1) ** 0.9).tolist()
    texts, size = [], 0
    while size < target_bytes:
        toks = []
        while sum(map(len, toks)) + len(toks) < text_bytes:
            t = r.choices(names, cum_weights=cum)[0] if r.random() < 0.25 else r.choice(words)
            x = r.random()
            t = t.upper() if x < 0.05 else t.capitalize() if x < 0.3 else t
            x = r.random()
            toks.append(t + ("," if x < 0.08 else "." if x < 0.12 else ""))
        text = " ".join(toks)
        texts.append(text)
        size += len(text.encode())
    return texts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="kvi bench linker", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", type=int, default=1_000_000)
    ap.add_argument("--mb", type=float, default=4.0, help="MB of text")
    ap.add_argument("--twin-names", type=int, default=100_000)
    ap.add_argument("--twin-mb", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=str(results.default_out("linker")))
    args = ap.parse_args(argv)
    require("ahocorasick", "bench", "kvi bench linker")  # the comparison baseline: fail before the expensive part
    r = random.Random(0)
    rng = np.random.default_rng(0)
    words = vocabulary(r, 200_000)
    distinct: set[str] = set()
    while len(distinct) < args.names:
        distinct.update(" ".join(r.choices(words, k=r.randint(1, 3))) for _ in range(args.names - len(distinct)))
    names = sorted(distinct)
    names = [names[i] for i in rng.permutation(len(names))[:args.names]]
    ids = (np.arange(len(names)) // 2).astype(np.int64)  # two aliases per entity
    priors = rng.random(len(names)).astype(np.float32)
    texts = corpus(r, words, names, int(args.mb * 1e6))
    mb = sum(len(t.encode()) for t in texts) / 1e6
    native_normalizer()  # Unicode tables: built once per process, not part of any linker's cost
    rows: list[Row] = []

    def add(bench, impl, wall, cpu, unit, scale=1.0, detail=""):
        rows.append(Row(bench, impl, scale / wall if unit.endswith("/s") else wall * scale,
                        scale / cpu if unit.endswith("/s") else cpu * scale, unit, detail))

    # (d) build
    before = rss_mb()
    wall, cpu, linker = best_of(lambda: EntityLinker.build(names, ids, priors, backend="cpp"), 1)
    add("build", "cpp", wall, cpu, "s", detail=f"{len(names)} names, {linker.num_keys} keys, "
                                               f"{linker._core.num_nodes} trie nodes")
    mem = (linker._core.memory_bytes + linker._names.blob.nbytes + linker._names.offsets.nbytes) / 2**20
    rows.append(Row("memory", "cpp", mem, mem, "MiB", f"trie + candidates + stored rows; RSS growth {rss_mb() - before:.0f}"))

    import ahocorasick
    before = rss_mb()

    def build_aho():
        A = ahocorasick.Automaton()
        for i, n in enumerate(names):
            A.add_word(n.lower(), i)
        A.make_automaton()
        return A
    wall, cpu, aho = best_of(build_aho, 1)
    add("build", "pyahocorasick", wall, cpu, "s")
    rows.append(Row("memory", "pyahocorasick", rss_mb() - before, rss_mb() - before, "MiB", "RSS growth"))

    # (c) throughput
    def count_cpp(threads):
        return lambda: int(linker.link_arrays(texts, num_threads=threads)[0][-1])
    for threads in (1, args.threads):
        wall, cpu, found = best_of(count_cpp(threads), 3)
        add("link", f"cpp link_arrays, {threads} thread(s)", wall, cpu, "MB/s", mb, f"{found} mentions")
    wall, cpu, found = best_of(lambda: sum(map(len, linker.link(texts, num_threads=1))), 2)
    add("link", "cpp link() -> Mention objects, 1 thread", wall, cpu, "MB/s", mb, f"{found} mentions")
    wall, cpu, found = best_of(lambda: sum(1 for t in texts for _ in aho.iter(t.lower())), 2)
    add("link", "pyahocorasick iter (overlapping, no boundaries)", wall, cpu, "MB/s", mb, f"{found} matches")
    wall, cpu, found = best_of(lambda: sum(1 for t in texts for _ in aho.iter_long(t.lower())), 2)
    add("link", "pyahocorasick iter_long (no boundaries)", wall, cpu, "MB/s", mb, f"{found} matches")

    # the twin is pure Python: a smaller dictionary and corpus, with the C++ core on the same for reference
    small = slice(0, args.twin_names)
    small_texts = texts[:max(1, int(len(texts) * args.twin_mb / args.mb))]
    small_mb = sum(len(t.encode()) for t in small_texts) / 1e6
    wall, cpu, twin = best_of(lambda: EntityLinker.build(names[small], ids[small], priors[small], backend="reference"), 1)
    add("build", "python twin", wall, cpu, "s", detail=f"{args.twin_names} names")
    wall, cpu, _ = best_of(lambda: EntityLinker.build(names[small], ids[small], priors[small], backend="cpp"), 1)
    add("build", "cpp", wall, cpu, "s", detail=f"{args.twin_names} names")
    core_small = EntityLinker.build(names[small], ids[small], priors[small], backend="cpp")
    wall, cpu, found = best_of(lambda: int(twin.link_arrays(small_texts)[0][-1]), 1)
    add("link", f"python twin ({args.twin_names} names)", wall, cpu, "MB/s", small_mb, f"{found} mentions")
    wall, cpu, found2 = best_of(lambda: int(core_small.link_arrays(small_texts, num_threads=1)[0][-1]), 3)
    add("link", f"cpp, 1 thread ({args.twin_names} names)", wall, cpu, "MB/s", small_mb, f"{found2} mentions")
    assert found == found2

    print(f"{len(names)} aliases, {mb:.1f} MB of text in {len(texts)} texts; {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(results.format_table(rows, ["bench", "impl", "value", "per_cpu", "unit", "detail"]))
    results.write(args.out, "linker", rows, vars(args), names=len(names), text_mb=mb,
                  load_average=os.getloadavg()[0])
    print(f"wrote {args.out}.json / .csv")
    return 0
