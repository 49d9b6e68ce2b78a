"""Crash safety: a child process updating a bank is SIGKILLed at random points, 50+ times; after every kill the bank
opens, verifies, and holds exactly the last committed state or the one being committed, with every capsule's KV
intact (52 kills). The child skips the package __init__ (which loads torch and the native core), so a kill costs
about one interpreter start (0.2 s CPU)."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from kvi_engine.bank import updates as bank_updates
from kvi_engine.bank.bank import KVBank
from kvi_engine.testing.synth_bank import create_tagged_bank, read_tagged

KILLS = 52
PKG = Path(__file__).resolve().parents[1] / "kvi_engine"

CHILD = r"""
import json, os, random, sys, types
pkg = types.ModuleType("kvi_engine"); pkg.__path__ = [sys.argv[1]]; sys.modules["kvi_engine"] = pkg
from kvi_engine.bank import updates as bu
from kvi_engine.bank.segments import Snapshot
from kvi_engine.testing.synth_bank import tagged_capsules
root, journal, seed = sys.argv[2], sys.argv[3], int(sys.argv[4])
rng = random.Random(seed)

def state():
    snap = Snapshot.open(root)
    return {int(i): snap.locate(int(i))[0].meta[snap.locate(int(i))[1]]["tag"] for i in snap.live_ids()}

def intend(s):
    with open(journal, "a") as f:
        f.write(json.dumps({str(k): v for k, v in s.items()}) + "\n")
        f.flush(); os.fsync(f.fileno())

cur = state()
print("ready", flush=True)
while True:
    live, nxt = sorted(cur), dict(cur)
    op = rng.choice(["add", "add", "remove", "replace", "compact"] if len(live) > 3 else ["add"])
    tag = rng.randrange(1000, 10 ** 6)
    if op == "add":
        n = rng.randint(1, 3)
        meta, tids, k, v = tagged_capsules(range(tag, tag + n))
        first = max(Snapshot.open(root).num_capsules, 0)
        nxt.update({first + j: tag + j for j in range(n)})
        intend(nxt); bu.add_kv(root, meta, tids, k, v)
    elif op == "remove":
        victims = rng.sample(live, rng.randint(1, 2))
        for i in victims: del nxt[i]
        intend(nxt); bu.remove(root, victims)
    elif op == "replace":
        i = rng.choice(live); meta, tids, k, v = tagged_capsules([tag]); nxt[i] = tag
        intend(nxt); bu.replace_kv(root, [i], meta, tids, k, v)
    else:
        intend(nxt); bu.compact(root)
    cur = nxt
"""


def bank_state(root: Path) -> dict[int, int]:
    return read_tagged(KVBank.open(root, verify=True))


def test_sigkill_at_random_points_never_tears_the_bank(tmp_path):
    root = create_tagged_bank(tmp_path / "bank", list(range(6)))
    journal = tmp_path / "journal.jsonl"
    states = [{i: i for i in range(6)}]
    rng = random.Random(1234)
    committed, torn_ops = 0, 0
    for kill in range(KILLS):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(PKG), str(root), str(journal), str(kill)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = child.stdout.readline()
            assert line.strip() == "ready", child.stderr.read()
            time.sleep(rng.uniform(0.0, 0.05))
            assert child.poll() is None, child.stderr.read()
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        lines = journal.read_text().splitlines() if journal.exists() else []
        intents = [{int(k): v for k, v in json.loads(x).items()} for x in lines]
        # The bank holds the last state whose commit began (if the rename happened) or the one before it.
        candidates = (states + intents)[-2:]
        got = bank_state(root)
        assert got in candidates, f"kill {kill}: bank state {got} is neither of {candidates}"
        committed += len(intents) - (got != candidates[-1])
        torn_ops += bool(intents) and got != candidates[-1]
        # Continue from what is on disk: drop an intent that never committed.
        states = [got]
        journal.unlink(missing_ok=True)
    print(f"{committed} updates committed, {torn_ops} of {KILLS} kills interrupted an update")
    assert committed >= 10 and torn_ops >= 10  # the children did real work and many kills landed mid-update
    bank_updates.compact(root)
    final = KVBank.open(root, verify=True)
    assert bank_state(root) == states[-1]
    names = sorted(p.name for p in root.iterdir())
    assert names == sorted(["LOCK", "MANIFEST.kvb", final.segments[0].path.name])  # orphans collected
