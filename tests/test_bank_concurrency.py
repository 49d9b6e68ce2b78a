"""Readers in threads while a writer adds, removes, replaces and compacts: every bank a reader opens is one whole
state (each capsule's KV matches its own record), and a bank object keeps its snapshot while the files change."""
import random
import threading
import time

import pytest

from kvi_engine.bank import updates as bank_updates
from kvi_engine.bank.bank import KVBank
from kvi_engine.testing.synth_bank import create_tagged_bank, read_tagged, tagged_capsules

SECONDS = 4.0


def read_all(bank, atol):
    """{id: tag} of the bank, checking every live capsule's tokens and (at one layer) KV against its tag."""
    return read_tagged(bank, layers_of=lambda i: [i % bank.num_layers], atol=atol)


@pytest.mark.parametrize("quant, atol", [("fp16", 0.0), ("int8", 0.05)])
def test_readers_never_see_a_torn_bank(tmp_path, quant, atol):
    root = create_tagged_bank(tmp_path / "bank", list(range(8)), quant)
    stop = threading.Event()
    errors: list[BaseException] = []
    counts = {"reads": 0, "writes": 0, "stable": 0}

    def writer():
        rng = random.Random(0)
        try:
            while not stop.is_set():
                live = KVBank.open(root).live_ids()
                op = rng.choice(["add", "remove", "replace", "compact"] if len(live) > 4 else ["add"])
                tag = rng.randrange(100, 10 ** 6)
                if op == "add":
                    bank_updates.add_kv(root, *tagged_capsules([tag, tag + 1]))
                elif op == "remove":
                    bank_updates.remove(root, rng.sample(live, 1))
                elif op == "replace":
                    bank_updates.replace_kv(root, [rng.choice(live)], *tagged_capsules([tag]))
                else:
                    bank_updates.compact(root)
                counts["writes"] += 1
        except BaseException as e:  # noqa: BLE001 -- reported by the main thread
            errors.append(e)
            stop.set()

    def reader():
        try:
            while not stop.is_set():
                bank = KVBank.open(root)
                first = read_all(bank, atol)
                counts["reads"] += 1
                time.sleep(0.01)  # let the writer move on, maybe delete this snapshot's files
                if read_all(bank, atol) != first:
                    raise AssertionError("a bank object changed under its reader")
                counts["stable"] += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(SECONDS)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    assert not any(t.is_alive() for t in threads), "a reader or the writer hung"
    print(quant, counts)
    assert counts["writes"] >= 5 and counts["reads"] >= 10, counts
    final = KVBank.open(root, verify=True)
    read_all(final, atol)
