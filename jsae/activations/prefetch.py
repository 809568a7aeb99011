"""Background prefetching: run a producer in a thread, a few items ahead of the consumer.

Host work (reading a dataset, tokenizing, gathering rows from disk) then overlaps with the
device work the consumer dispatches. Errors in the producer are raised in the consumer, and
the end of the stream (or the error) is remembered: every later `get()` raises it again
instead of waiting on a producer that has exited.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any


class Prefetcher:
    """Iterates `make()` in a daemon thread, keeping up to `depth` items ready."""

    def __init__(self, make: Callable[[], Iterator[Any]], depth: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._outcome: BaseException | None = None  # StopIteration or the producer's error
        self._closed = False
        self._thread = threading.Thread(target=self._run, args=(make,), daemon=True)
        self._thread.start()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, make: Callable[[], Iterator[Any]]) -> None:
        try:
            for item in make():
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as exc:  # raised in the consumer by get()
            self._put(("error", exc))

    def get(self) -> Any:
        """The next item; StopIteration at the end; the producer's exception if it failed.

        Once the stream has ended or failed, every later call raises that again.
        """
        if self._outcome is not None:
            raise self._outcome
        if self._closed:
            raise RuntimeError("get() on a closed Prefetcher; its remaining items were dropped.")
        kind, value = self._queue.get()
        if kind == "item":
            return value
        self._stop.set()
        self._outcome = StopIteration() if kind == "end" else value
        raise self._outcome

    def close(self) -> None:
        """Stop the thread (items not yet consumed are dropped)."""
        self._closed = True
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
