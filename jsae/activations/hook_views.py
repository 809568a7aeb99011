"""Per-hook iterators over one multi-hook `ActivationStore`, in lockstep and resumable together.

`train_saes` trains one SAE per hook of a store, each in its own thread: every batch the store
yields (one model forward for all hooks) goes to each hook's `HookView`, and a view more than
`max_lag` batches ahead of the slowest waits for it.

Resuming. The views are resumable sources (`state()` / `restore()`), so each SAE's checkpoint
holds its view's position: the store's state with its buffer as of the last batch the store
produced (the store's count `produced`, P), how many batches this hook's SAE consumed (c), and
this hook's batches produced but not yet consumed (P - c of them, at most `max_lag + 1`). The
SAEs of a run stop a few steps apart, so their checkpoints hold different P. On a new store
built with the same settings, the restored views start together at the first read: the store
goes back to the smallest P among them; a view whose SAE had consumed more skips the batches it
had trained on, and one that had consumed less first takes its saved batches. Every SAE then
sees the stream it would have seen uninterrupted, and the model does not run again over the
batches already trained on (it runs again only for the few skipped ones). A view restored on
a store of other hooks (one SAE finished alone on a store of its hook) cannot use the saved
store; it reads its stream again from the start, which is the same whatever hooks share it.

A consumer may read two hooks (a transcoder: its input and its target): its view yields
`(x, y)` pairs of the same rows, and its state holds both hooks' unconsumed batches.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np

from jsae.config import jax_dtype
from jsae.errors import ConfigError

if TYPE_CHECKING:
    from jsae.activations.store import ActivationStore


class HookViews:
    """Fan-out of a multi-hook store: one bounded queue per consumer, filled by one producer.

    `reads` maps each consumer's name to the hooks it reads (default: one consumer per hook,
    named after it); a consumer of two hooks gets `(x, y)` pairs of the same rows.
    """

    def __init__(
        self, store: ActivationStore, max_lag: int, reads: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        self.store = store
        self.max_lag = max(1, int(max_lag))
        reads = {h: (h,) for h in store.hook_names} if reads is None else reads
        self.reads = {name: tuple(hooks) for name, hooks in reads.items()}
        for name, hooks in self.reads.items():
            unknown = [h for h in hooks if h not in store.hook_names]
            if unknown or not 1 <= len(hooks) <= 2:
                raise ConfigError(
                    f"the view {name!r} reads {list(hooks)}: a view reads one or two of the "
                    f"store's hooks {store.hook_names}."
                )
        self.lock = threading.Lock()  # one producer at a time
        # The store's position and each view's bookkeeping; held while the store produces a
        # batch, never while waiting on a consumer, so a view's state() never deadlocks.
        self.meta = threading.Lock()
        self.queues = {name: queue.Queue(maxsize=self.max_lag) for name in self.reads}
        self.closed: set[str] = set()  # consumers that stopped: nothing more is queued for them
        self.produced = 0  # batches the store has yielded to these views (P)
        self.started = False  # after the first read or state: restoring is over
        self.restored: dict[str, Mapping[str, Any]] = {}  # name -> its view's restored state
        self.views = {name: HookView(self, name, hooks) for name, hooks in self.reads.items()}

    def close(self, name: str) -> None:
        """The consumer `name` is done (finished or failed); stop queueing for it."""
        self.closed.add(name)

    def _placed(self, rows: tuple) -> Any:
        """What a view hands out of one batch's rows (one per hook it reads): the hook's rows
        on the device, or a pair of two hooks' rows."""
        placed = tuple(self.store.place(r) for r in rows)
        return placed[0] if len(placed) == 1 else placed

    def start(self) -> None:
        """Put the restored positions into effect (once, under `meta`, at the first read)."""
        if self.started:
            return
        self.started = True
        if not self.restored:
            return
        full = {h: s for h, s in self.restored.items() if "produced" in s}
        if len(full) < len(self.views):
            # A hook starts afresh (or a state without the store's): the stream starts from
            # the beginning, and the restored views skip what their SAEs had trained on.
            for hook, state in self.restored.items():
                self.views[hook].skip = int(state["consumed"])
            return
        base = min(full.values(), key=lambda s: int(s["produced"]))
        self.store.restore(base["store"])
        self.produced = int(base["produced"])
        for name, state in full.items():
            view, consumed = self.views[name], int(state["consumed"])
            behind = self.produced - consumed
            if behind <= 0:
                view.skip = -behind
                continue
            keys = _PENDING[: len(view.reads)]
            pending = [np.asarray(state[k]) for k in keys]  # [P_view - consumed, B_local, d]
            if min(len(p) for p in pending) < behind:
                raise ConfigError(
                    f"the checkpoint of the view of {name} holds {len(pending[0])} unconsumed "
                    f"batches but {behind} are needed; it does not belong with the others."
                )
            for i in range(behind):
                rows = tuple(jnp.asarray(p[i]) for p in pending)
                view.outstanding.append(rows)
                view.preloaded.append(self._placed(rows))

    def fill(self) -> None:
        """Produce the next batch (one model forward) and queue it for every open hook."""
        with self.meta:
            self.start()
            batch = self.store.next_rows()  # {hook: [B_local, d_in]}
            self.produced += 1
            receivers = []
            for name, view in self.views.items():
                if name in self.closed:
                    continue
                if view.skip:  # already trained on before the resume
                    view.skip -= 1
                    continue
                rows = tuple(batch[h] for h in view.reads)
                view.outstanding.append(rows)
                receivers.append((name, rows))
        for name, rows in receivers:
            placed, q = self._placed(rows), self.queues[name]
            while name not in self.closed:  # waits while that consumer is max_lag behind
                try:
                    q.put(placed, timeout=0.05)
                    break
                except queue.Full:
                    continue


_PENDING = ("pending", "pending_out")  # state keys of a view's unconsumed batches, per hook


class HookView:
    """Iterator over one consumer's batches of a shared multi-hook store (a resumable source):
    arrays of one hook, or `(x, y)` pairs of two."""

    def __init__(self, views: HookViews, name: str, reads: tuple[str, ...] | None = None) -> None:
        self._views, self.hook = views, name  # `hook`: the consumer's name (its hook, usually)
        self.reads = reads or (name,)
        self.consumed = 0  # batches handed to the consumer
        self.skip = 0  # batches to pass over after a resume (their SAE had trained on them)
        self.outstanding: deque[tuple] = deque()  # rows per read hook, not yet consumed
        self.preloaded: deque[Any] = deque()  # saved batches a resume hands out first

    def close(self) -> None:
        """No more batches will be read from this view (the others no longer wait for it)."""
        self._views.close(self.hook)

    def __iter__(self) -> HookView:
        return self

    def __next__(self) -> Any:
        views = self._views
        with views.meta:
            views.start()
            batch = self.preloaded.popleft() if self.preloaded else None
        if batch is None:
            batch = self._from_queue()
        with views.meta:
            self.consumed += 1
            self.outstanding.popleft()
        return batch

    def _from_queue(self) -> Any:
        q = self._views.queues[self.hook]
        while True:
            try:
                return q.get_nowait()
            except queue.Empty:
                pass
            if self._views.lock.acquire(timeout=0.01):
                try:
                    if q.empty():
                        self._views.fill()
                finally:
                    self._views.lock.release()

    def state(self, include_buffer: bool = False) -> dict[str, Any]:
        """Where this hook's stream stands. With `include_buffer=True` (what a checkpoint
        takes): the store's state with its buffer and this hook's unconsumed batches, enough
        to resume every hook without re-running the model; without, only the count consumed
        (a resume from it runs the model again over the batches already trained on)."""
        if not include_buffer:
            return {"hook": self.hook, "consumed": self.consumed}
        views = self._views
        with views.meta:
            views.start()
            items = list(self.outstanding)
            state = {
                "hook": self.hook,
                "hooks": list(views.store.hook_names),
                "consumed": self.consumed,
                "produced": views.produced,
                "store": views.store.state(include_buffer=True),
            }
            if self.reads != (self.hook,):
                state["reads"] = list(self.reads)
            for i, (key, hook) in enumerate(zip(_PENDING, self.reads, strict=False)):
                empty = (0, views.store.local_batch_size, views.store.d_in[hook])
                state[key] = (
                    np.stack([np.asarray(item[i]) for item in items])
                    if items
                    else np.zeros(empty, jax_dtype(views.store.dtype))
                )
            return state

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a `state()`; every hook's view is restored before any is read."""
        views = self._views
        with views.meta:
            if views.started:
                raise ConfigError(
                    "restore the views of every hook before reading from any of them (build "
                    "every hook's Trainer first, as train_saes does)."
                )
            if "hook" not in state:
                raise ConfigError(
                    "this checkpoint holds the position of a single activation store (a run of "
                    "jsae train), not of one hook of train_saes's shared store; resume it as it "
                    "was trained (jsae train --resume, or a Trainer on an ActivationStore)."
                )
            if state.get("hook") != self.hook:
                raise ConfigError(
                    f"this checkpoint is of the view of {state.get('hook')!r}, not {self.hook!r}; "
                    "resume each hook's SAE from its own checkpoint."
                )
            saved_reads = list(state.get("reads", [self.hook]))
            if saved_reads != list(self.reads):
                raise ConfigError(
                    f"this checkpoint of {self.hook!r} read {saved_reads}, this view reads "
                    f"{list(self.reads)}; resume it with the hooks it trained on."
                )
            hooks = state.get("hooks")
            if hooks is not None and list(hooks) != list(views.store.hook_names):
                # The saved store rows hold other hooks' columns, so the store cannot go back
                # to them; a hook's stream does not depend on which hooks share the store, so
                # reading it again from the start reaches the same batches (the model runs).
                state = {"hook": self.hook, "consumed": state["consumed"]}
            views.restored[self.hook] = dict(state)
            self.consumed = int(state["consumed"])
