"""The shared base of a kinship pass: which tensors it runs over and which shapes fit it."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import KinshipError
from .groups import GROUPS, VOCAB_TENSOR, name_selector
from .stores import TensorStore


class KinshipBase:
    """The shared base: the tensors kinship runs over, shape rules, and an optional Hub id."""

    def __init__(
        self, store: TensorStore, include: Sequence[str] | None, base_id: str | None
    ) -> None:
        self.store = store
        self.base_id = base_id
        self.all_names = set(store.names)
        self._shapes: dict[str, tuple[int, ...]] = {}
        wanted = [name_selector(p) for p in include or []]
        self.names = [
            n
            for n in store.names
            if store.is_float(n) and (not wanted or any(w(n) for w in wanted))
        ]
        if not self.names:
            raise KinshipError(
                f"No floating-point tensor of the base matches {list(include or [])}: groups are "
                f"{', '.join(GROUPS)}, 'other', or a regular expression over tensor names."
            )

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._shapes:
            self._shapes[name] = self.store.shape(name)
        return self._shapes[name]

    def fit_shape(self, name: str, shape: tuple[int, ...], who: str) -> None:
        want = self.shape(name)
        if tuple(shape) == want:
            return
        larger_vocab = (
            VOCAB_TENSOR.search(name) is not None
            and len(shape) == len(want) >= 1
            and shape[1:] == want[1:]
            and shape[0] > want[0]
        )
        if not larger_vocab:
            raise KinshipError(
                f"{who}: tensor {name!r} has shape {tuple(shape)} but the base's is {want}; models "
                "of different shapes have no common base, so no kinship."
            )
