"""The served bank's generations. ``kvi bank add/remove/recompile`` renames a new manifest over the old one; the
watcher notices (a ``stat`` of the manifest, at most every ``interval`` seconds), opens the new snapshot and hands
it to requests submitted from then on. A request keeps the snapshot it was submitted on from start to end (a
:class:`~kvi_engine.bank.bank.KVBank` object never changes under its reader); the scheduler moves its batch to a new
generation only between batches, once every row of the old one has finished."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from kvi_engine.bank.bank import KVBank
from kvi_engine.bank.segments import FIRST_SEGMENT, MANIFEST_FILE


def _stamp(root: Path):
    for name in (MANIFEST_FILE, FIRST_SEGMENT):
        try:
            st = os.stat(root / name)
        except FileNotFoundError:
            continue
        return name, st.st_ino, st.st_mtime_ns, st.st_size
    return None


class BankWatcher:
    def __init__(self, bank: KVBank, *, interval: float = 0.1, on_change=None):
        self._bank, self.interval, self.on_change = bank, interval, on_change
        self._root = bank.root if Path(bank.root).is_dir() else None
        self._stamp = _stamp(self._root) if self._root else None
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def latest(self) -> KVBank:
        """The newest generation (re-opened when the manifest changed since the last look)."""
        if self._root is None or time.monotonic() - self._checked < self.interval:
            return self._bank
        with self._lock:
            self._checked = time.monotonic()
            stamp = _stamp(self._root)
            if stamp != self._stamp:
                bank = KVBank.open(self._root)
                self._stamp = stamp
                if bank.generation != self._bank.generation:
                    self._bank = bank
                    if self.on_change is not None:
                        self.on_change(bank)
            return self._bank
