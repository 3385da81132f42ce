"""The interface every streaming statistic implements."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from universal_neurons.engine.batch import ActivationBatch


@runtime_checkable
class Accumulator(Protocol):
    """A statistic accumulated over the token stream in one pass.

    Built from shapes and dtypes (never from models). ``merge`` combines two
    accumulators that saw disjoint token sets exactly (used by distributed runs and
    tiling); ``state_dict``/``load_state_dict`` make checkpoints (tensors and plain
    Python values only, loadable with ``torch.load(weights_only=True)``).
    """

    sites: tuple[str, ...]
    """Activation sites this accumulator needs, e.g. ``("post",)`` or ``("pre", "post")``."""

    def update(self, batch: ActivationBatch) -> None: ...

    def merge(self, other: Any) -> None: ...

    def finalize(self) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
