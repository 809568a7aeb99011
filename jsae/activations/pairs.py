"""`HookPairs`: a transcoder's training batches `(x, y)` from a two-hook store or cache.

A transcoder learns one hook's activations (`hook_name_out`, say an MLP's output) from another's
(`hook_name`, its input). An `ActivationStore` or `CachedActivations` over both hooks yields
`{hook: [B, d]}` batches whose rows are the same tokens at every hook, so pairing them row for
row gives the transcoder's inputs and targets. The pairs keep the source's resumability.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


class HookPairs:
    """Iterator of `(x [B, d_in], y [B, d_out])`: `hook_in`'s and `hook_out`'s rows of each
    batch of a multi-hook `source` (the same rows twice when the two hooks are one)."""

    def __init__(self, source: Any, hook_in: str, hook_out: str) -> None:
        self.source, self.hook_in, self.hook_out = source, hook_in, hook_out

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return self

    def __next__(self) -> tuple[Any, Any]:
        batch = next(self.source)
        if not isinstance(batch, Mapping):  # one hook serves as input and target
            return batch, batch
        return batch[self.hook_in], batch[self.hook_out]

    @property
    def position_is_global(self) -> bool:
        return bool(getattr(self.source, "position_is_global", False))

    def state(self, include_buffer: bool = False) -> dict[str, Any]:
        """The source's position (with its buffered rows, when it has them and they are asked
        for: a checkpoint of an activation store)."""
        from jsae.training.sources import takes_buffer

        if takes_buffer(self.source):
            return self.source.state(include_buffer=include_buffer)
        return self.source.state()

    def restore(self, state: Mapping[str, Any]) -> None:
        self.source.restore(state)

    def close(self) -> None:
        if hasattr(self.source, "close"):
            self.source.close()
