"""One per-process snapshot of something costly to read, shared by the process's threads.

`ProcessSnapshot(load, fresh)`: `get()` hands out the current value while `fresh(value)` says it may still be used
(an expiry time, a version number), and otherwise loads a new one with `load(previous)`; one thread loads, the
others wait for its value rather than use a stale one or load it again. `forget()` drops it (after this process
changed what it mirrors). The fast path is an attribute read and the `fresh` check, without the lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ProcessSnapshot(Generic[T]):
    def __init__(self, load: Callable[[T | None], T], fresh: Callable[[T], bool]) -> None:
        self._load, self._fresh = load, fresh
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        value = self._value
        if value is not None and self._fresh(value):
            return value
        with self._lock:
            value = self._value
            if value is None or not self._fresh(value):
                value = self._value = self._load(value)
            return value

    def forget(self) -> None:
        with self._lock:
            self._value = None
