"""Per-candidate statistics accumulated through the merge tree, and ranking values.

For a candidate segment S (a tree node = a union of superpixels) GGN scores
pixels on its thick boundary (pixels of S with a 4-neighbour outside S, plus
pixels outside S with a 4-neighbour in S) against its interior (S minus its inner
boundary). Instead of one full-image pass per candidate we note, for every pixel
on a superpixel boundary, which tree nodes it is an inner / outer boundary pixel
of. Those nodes form paths in the tree, so each pixel adds its value at the
path's start and subtracts it at the node where the path stops; subtree sums
then give every node's statistics at once.

- inner boundary of S: label(p) in S and not all 4-neighbour labels in S -> the
  path from leaf label(p) up to (excluding) the LCA of label(p) and its neighbours.
- outer boundary of S: label(p) not in S and some neighbour label in S -> the union
  of the root paths of the neighbour labels (sorted by DFS order, minus the LCAs of
  consecutive ones), cut at the lowest ancestor of label(p) that contains one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from oln.grouping.hierarchy import LowestCommonAncestor, MergeTree, dfs_intervals, subtree_sums, unique_pairs
from oln.grouping.oversegment import thick_boundaries

RANK_METHODS = ("boundary", "inside", "inside_minus_boundary", "boundary_minus_inside", "ncut")
EMPTY_RANK_VALUE = 100.0  # GGN's value for segments without boundary or interior (ranked last)


class Stat(IntEnum):
    """Column of one candidate statistic in the per-node accumulation array."""

    AREA = 0
    SUM = 1
    BORDER = 2
    INNER_SUM = 3
    INNER_COUNT = 4
    OUTER_SUM = 5
    OUTER_COUNT = 6


STAT_FIELDS = tuple(column.name.lower() for column in Stat)  # keys of `candidate_statistics`


def check_rank_method(method: str) -> None:
    """Raise ValueError naming `method` if it is not one of RANK_METHODS."""
    if method not in RANK_METHODS:
        raise ValueError(f"unknown rank method {method!r}; expected one of {RANK_METHODS}")


@dataclass
class _BoundaryPixels:
    """Pixels with a 4-neighbour of another label.

    Attributes:
        own: int64 (P,) their labels.
        values: float64 (P,) their potential.
        neighbours: 4 int64 arrays (P,) of their neighbour labels in ascending order (a pixel's
            own label stands in for neighbours outside the image).
        distinct: 4 bool arrays (P,): the j-th neighbour label is foreign and not a repeat of the one before.
        num_foreign: int64 (P,) distinct foreign neighbour labels.
    """

    own: np.ndarray
    values: np.ndarray
    neighbours: list[np.ndarray]
    distinct: list[np.ndarray]
    num_foreign: np.ndarray


@dataclass
class _PathUpdates:
    """Weights added at the start of tree paths and subtracted where they stop.

    Attributes:
        starts, stops: (nodes, weights, statistic) in the order they are applied; a stop node
            of -1 means the path runs to the root.
    """

    starts: list[tuple[np.ndarray, np.ndarray, Stat]] = field(default_factory=list)
    stops: list[tuple[np.ndarray, np.ndarray, Stat]] = field(default_factory=list)


def _boundary_pixels(labels: np.ndarray, flat_potential: np.ndarray) -> _BoundaryPixels:
    """The pixels of `labels` with a 4-neighbour of another label, their values and neighbour labels."""
    width = labels.shape[1]
    on_boundary = np.flatnonzero(thick_boundaries(labels))
    centre = on_boundary + (width + 3) + 2 * (on_boundary // width)  # in the padded image
    padded = np.pad(labels, 1, mode="edge").ravel()
    n0, n1, n2, n3 = (padded[centre + step] for step in (-(width + 2), width + 2, -1, 1))
    # sorting network for 4 values
    n0, n1 = np.minimum(n0, n1), np.maximum(n0, n1)
    n2, n3 = np.minimum(n2, n3), np.maximum(n2, n3)
    n0, n2 = np.minimum(n0, n2), np.maximum(n0, n2)
    n1, n3 = np.minimum(n1, n3), np.maximum(n1, n3)
    n1, n2 = np.minimum(n1, n2), np.maximum(n1, n2)
    neighbours = [n.astype(np.int64) for n in (n0, n1, n2, n3)]
    own = labels.ravel()[on_boundary].astype(np.int64)
    distinct = [neighbours[0] != own] + [
        (neighbours[j] != own) & (neighbours[j] != neighbours[j - 1]) for j in (1, 2, 3)
    ]
    num_foreign = distinct[0].astype(np.int64) + distinct[1] + distinct[2] + distinct[3]
    return _BoundaryPixels(own, flat_potential[on_boundary], neighbours, distinct, num_foreign)


def candidate_statistics(
    labels: np.ndarray,
    potential: np.ndarray,
    tree: MergeTree,
    lca: LowestCommonAncestor | None = None,
    enter: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Statistics of every tree node, keyed by STAT_FIELDS.

    area: pixels; sum: potential summed over the segment; border: segment pixels on
    the image's first/last row/column (corners twice); inner_*: potential sum and
    pixel count of the inner boundary; outer_*: same for the outer boundary.

    Args:
        labels: int (H, W) superpixels 0..L-1 (the tree's leaves).
        potential: float (H, W) map the statistics are taken of (the affinity).
        tree: merge tree over the superpixels.
        lca, enter: precomputed LowestCommonAncestor / DFS entry order (optional).
    Returns:
        dict of float64 arrays (num_nodes,).
    """
    if enter is None:
        enter, _ = dfs_intervals(tree)
    lca = lca or LowestCommonAncestor(tree, enter)
    flat_potential = potential.ravel().astype(np.float64)
    per_node = _region_statistics(labels, flat_potential, tree)
    pixels = _boundary_pixels(labels, flat_potential)
    updates = _PathUpdates()
    _single_neighbour_paths(pixels, tree, lca, updates)
    _junction_paths(pixels, lca, enter, updates)
    totals = _accumulate_up_tree(tree, per_node, updates)
    return {name: totals[:, column] for name, column in zip(STAT_FIELDS, Stat)}


def _region_statistics(labels: np.ndarray, flat_potential: np.ndarray, tree: MergeTree) -> np.ndarray:
    """Per-node statistics array (num_nodes, len(Stat)) with each superpixel's area, sum and border.

    The boundary columns and the merged nodes' rows are zero (filled by `_accumulate_up_tree`).
    """
    flat_labels = labels.ravel()
    leaves = tree.num_leaves
    per_node = np.zeros((tree.num_nodes, len(Stat)))
    per_node[:leaves, Stat.AREA] = np.bincount(flat_labels, minlength=leaves)
    per_node[:leaves, Stat.SUM] = np.bincount(flat_labels, flat_potential, minlength=leaves)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    per_node[:leaves, Stat.BORDER] = np.bincount(border, minlength=leaves)
    return per_node


def _single_neighbour_paths(pixels: _BoundaryPixels, tree: MergeTree, lca: LowestCommonAncestor,
                            updates: _PathUpdates) -> None:
    """Paths of boundary pixels with one foreign neighbour label, summed per (own, foreign) pair.

    Such a pixel is on the inner boundary of the nodes from its own label up to (excluding)
    the pair's LCA, and on the outer boundary of those from the foreign label up to it.
    """
    single = pixels.num_foreign == 1
    if not single.any():
        return
    a = pixels.own[single]
    # the one foreign label: the smallest neighbour label, or the largest when that is the own
    b = np.where(pixels.distinct[0], pixels.neighbours[0], pixels.neighbours[3])[single]
    keys, inverse = unique_pairs(a, b, tree.num_leaves)
    pair_sum = np.bincount(inverse, pixels.values[single])
    pair_count = np.bincount(inverse).astype(np.float64)
    a, b = keys // tree.num_leaves, keys % tree.num_leaves
    joint = lca(a, b)
    for start, total, count in ((a, Stat.INNER_SUM, Stat.INNER_COUNT), (b, Stat.OUTER_SUM, Stat.OUTER_COUNT)):
        for column, weights in ((total, pair_sum), (count, pair_count)):
            updates.starts.append((start, weights, column))
            updates.stops.append((joint, weights, column))


def _junction_paths(pixels: _BoundaryPixels, lca: LowestCommonAncestor, enter: np.ndarray,
                    updates: _PathUpdates) -> None:
    """Paths of boundary pixels with several foreign neighbour labels (one path per pixel)."""
    junction = pixels.num_foreign > 1
    if not junction.any():
        return
    own = pixels.own[junction]
    values = pixels.values[junction]
    foreign = np.stack(
        [np.where(d[junction], n[junction], -1) for d, n in zip(pixels.distinct, pixels.neighbours)], axis=1
    )
    _junction_inner_paths(own, values, foreign, lca, updates)
    _junction_outer_paths(own, values, foreign, lca, enter, updates)


def _junction_inner_paths(own: np.ndarray, values: np.ndarray, foreign: np.ndarray, lca: LowestCommonAncestor,
                          updates: _PathUpdates) -> None:
    """Inner boundary: from the own label up to the LCA of it and all neighbour labels (-1 = none)."""
    joint = own.copy()
    for j in range(foreign.shape[1]):
        ok = (foreign[:, j] >= 0) & (joint >= 0)
        joint[ok] = lca(joint[ok], foreign[ok, j])
    ones = np.ones_like(values)
    updates.starts += [(own, values, Stat.INNER_SUM), (own, ones, Stat.INNER_COUNT)]
    updates.stops += [(joint, values, Stat.INNER_SUM), (joint, ones, Stat.INNER_COUNT)]


def _junction_outer_paths(own: np.ndarray, values: np.ndarray, foreign: np.ndarray, lca: LowestCommonAncestor,
                          enter: np.ndarray, updates: _PathUpdates) -> None:
    """Outer boundary: the union of the foreign labels' root paths, cut below the own label's ancestors.

    With the foreign labels in DFS order, the union of their root paths is each path minus
    the LCA path of consecutive ones; it stops at the deepest LCA of the own label with one.
    """
    order_key = np.where(foreign >= 0, enter[np.maximum(foreign, 0)], np.iinfo(np.int64).max)
    foreign = np.take_along_axis(foreign, np.argsort(order_key, axis=1), axis=1)
    ones = np.ones_like(values)
    deepest = np.full(len(own), -1, dtype=np.int64)
    last = foreign.shape[1] - 1
    for j in range(foreign.shape[1]):
        ok = foreign[:, j] >= 0
        updates.starts += [(foreign[ok, j], values[ok], Stat.OUTER_SUM), (foreign[ok, j], ones[ok], Stat.OUTER_COUNT)]
        with_own = np.full(len(own), -1, dtype=np.int64)
        with_own[ok] = lca(own[ok], foreign[ok, j])
        replace = (with_own >= 0) & ((deepest < 0) | (lca.depth[np.maximum(with_own, 0)] > lca.depth[deepest]))
        deepest[replace] = with_own[replace]
        if j < last:
            pair = ok & (foreign[:, j + 1] >= 0)
            meet = np.full(len(own), -1, dtype=np.int64)
            meet[pair] = lca(foreign[pair, j], foreign[pair, j + 1])
            updates.stops += [(meet, values, Stat.OUTER_SUM), (meet, ones, Stat.OUTER_COUNT)]
    updates.stops += [(deepest, values, Stat.OUTER_SUM), (deepest, ones, Stat.OUTER_COUNT)]


def _accumulate_up_tree(tree: MergeTree, per_node: np.ndarray, updates: _PathUpdates) -> np.ndarray:
    """Add the path starts, subtract the path stops, then sum every node's subtree.

    Returns:
        float64 (num_nodes, len(Stat)) statistics of every node (`per_node` is modified).
    """
    for entries, sign in ((updates.starts, 1.0), (updates.stops, -1.0)):
        for nodes, weights, column in entries:
            keep = nodes >= 0
            per_node[:, column] += sign * np.bincount(nodes[keep], weights[keep], minlength=tree.num_nodes)
    return subtree_sums(tree, per_node)


def rank_values(stats: dict[str, np.ndarray], method: str = "boundary_minus_inside") -> np.ndarray:
    """GGN ranking value per candidate; lower is better (score = 1 - value).

    boundary: mean potential on the thick boundary; inside: minus the mean over the
    segment; inside_minus_boundary: -(segment sum - 2 x boundary sum) / area;
    boundary_minus_inside: boundary mean minus interior mean (100 when either is
    empty); ncut: boundary sum / (interior sum + boundary sum).
    """
    check_rank_method(method)
    area = stats["area"]
    boundary_sum = stats["inner_sum"] + stats["outer_sum"]
    boundary_count = stats["inner_count"] + stats["outer_count"]
    interior_sum = stats["sum"] - stats["inner_sum"]
    interior_count = area - stats["inner_count"]
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "boundary":
            value = boundary_sum / boundary_count
        elif method == "inside":
            value = -stats["sum"] / area
        elif method == "inside_minus_boundary":
            value = -(stats["sum"] - 2.0 * boundary_sum) / area
        elif method == "boundary_minus_inside":
            value = boundary_sum / boundary_count - interior_sum / interior_count
            value[(boundary_count <= 0) | (interior_count <= 0)] = EMPTY_RANK_VALUE
        else:  # ncut
            value = boundary_sum / (interior_sum + boundary_sum)
    return np.where(np.isfinite(value), value, EMPTY_RANK_VALUE)
