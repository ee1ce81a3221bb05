"""Priority queue of region-graph edges for `oln.grouping.hierarchy.merge_hierarchy`."""

from __future__ import annotations

import heapq
from collections.abc import Callable

OrderKey = Callable[[int, int], tuple[int, int] | None]  # (slot, slot) -> order among equal weights; None: stale


class EdgeQueue:
    """Queued edges (weight, slot, slot), popped by weight, equal weights by `order_key(slot, slot)`.

    A heap of distinct float weights (float comparisons are several times cheaper than
    tuple ones) and per weight the one slot-pair code a * num_slots + b, or, when several
    edges share the weight, a heap of (order key, code). An edge's order key only grows
    (it changes when an end merges into a newer node), so a stale key is refreshed when
    it reaches the top. Entries are never removed early: the caller skips those whose slot
    was absorbed (order key None) or whose edge was replaced by one of another weight; one
    with the live edge's slots and weight is ordered exactly like the live edge, so merges
    happen in GGN's (weight, a, b) order.
    """

    def __init__(self, num_slots: int, order_key: OrderKey):
        self.num_slots = num_slots
        self.order_key = order_key
        self.weights: list[float] = []
        self.codes: dict[float, int | list[tuple[tuple[int, int] | None, int]]] = {}

    def __bool__(self) -> bool:
        return bool(self.weights)

    def _keyed(self, code: int) -> tuple[tuple[int, int] | None, int]:
        key = self.order_key(*divmod(code, self.num_slots))
        return (key if key is not None else (-1, -1)), code

    def push(self, weight: float, slot_a: int, slot_b: int) -> None:
        """Queue the edge between two slots under `weight`."""
        code = slot_a * self.num_slots + slot_b
        codes = self.codes.get(weight)
        if codes is None:
            self.codes[weight] = code
            heapq.heappush(self.weights, weight)
        elif type(codes) is int:
            self.codes[weight] = [self._keyed(codes), self._keyed(code)]
            heapq.heapify(self.codes[weight])
        else:
            heapq.heappush(codes, self._keyed(code))

    def rename(self, weight: float, old: int, other: int, new: int) -> None:
        """Make the queued live edge between slots `old` and `other` one between `new` and `other`."""
        code = new * self.num_slots + other
        codes = self.codes[weight]
        if type(codes) is int:  # the live edge is queued under its weight, so this is it
            self.codes[weight] = code
        else:  # its old entry names an absorbed slot from now on
            heapq.heappush(codes, self._keyed(code))

    def pop(self) -> tuple[float, int, int]:
        """Remove and return an entry of the lowest weight, the one with the smallest order key."""
        weight = self.weights[0]
        codes = self.codes[weight]
        if type(codes) is int:
            code = codes
        else:
            while True:
                stored, code = codes[0]
                key = self.order_key(*divmod(code, self.num_slots))
                if key is None or key == stored:
                    break
                heapq.heapreplace(codes, (key, code))
            heapq.heappop(codes)
        if type(codes) is int or not codes:
            heapq.heappop(self.weights)
            del self.codes[weight]
        slot_a, slot_b = divmod(code, self.num_slots)
        return weight, slot_a, slot_b
