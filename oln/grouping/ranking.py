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

import numpy as np

from oln.grouping.hierarchy import LowestCommonAncestor, MergeTree, dfs_intervals, subtree_sums, unique_pairs
from oln.grouping.oversegment import thick_boundaries

RANK_METHODS = ("boundary", "inside", "inside_minus_boundary", "boundary_minus_inside", "ncut")
EMPTY_RANK_VALUE = 100.0  # GGN's value for segments without boundary or interior (ranked last)

STAT_FIELDS = ("area", "sum", "border", "inner_sum", "inner_count", "outer_sum", "outer_count")


def check_rank_method(method: str) -> None:
    """Raise ValueError naming `method` if it is not one of RANK_METHODS."""
    if method not in RANK_METHODS:
        raise ValueError(f"unknown rank method {method!r}; expected one of {RANK_METHODS}")


def _boundary_neighbourhoods(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pixels with a 4-neighbour of another label, and their 4 neighbour labels sorted ascending.

    Returns:
        flat indices (P,) of those pixels in raster order; 4 int64 arrays (P,) of their
        neighbour labels in ascending order (a pixel's own label stands in for
        neighbours outside the image).
    """
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
    return on_boundary, [n.astype(np.int64) for n in (n0, n1, n2, n3)]


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
    num_nodes = tree.num_nodes
    flat_labels = labels.ravel()
    leaf_stats = np.zeros((num_nodes, len(STAT_FIELDS)))
    leaf_stats[: tree.num_leaves, 0] = np.bincount(flat_labels, minlength=tree.num_leaves)
    flat_potential = potential.ravel().astype(np.float64)
    leaf_stats[: tree.num_leaves, 1] = np.bincount(flat_labels, flat_potential, minlength=tree.num_leaves)
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    leaf_stats[: tree.num_leaves, 2] = np.bincount(border, minlength=tree.num_leaves)

    on_boundary, columns = _boundary_neighbourhoods(labels)
    own = flat_labels[on_boundary].astype(np.int64)
    values = flat_potential[on_boundary]
    # distinct[j]: the j-th sorted neighbour label is foreign and not a repeat of the one before
    distinct = [columns[0] != own] + [(columns[j] != own) & (columns[j] != columns[j - 1]) for j in (1, 2, 3)]
    num_foreign = distinct[0].astype(np.int64) + distinct[1] + distinct[2] + distinct[3]

    starts: list[tuple[np.ndarray, np.ndarray, int]] = []  # (nodes, values, stat column), added
    stops: list[tuple[np.ndarray, np.ndarray, int]] = []  # subtracted (nodes may be -1 = none)

    single = num_foreign == 1
    if single.any():
        a = own[single]
        # the one foreign label: the smallest neighbour label, or the largest when that is the own
        b = np.where(distinct[0], columns[0], columns[3])[single]
        keys, inverse = unique_pairs(a, b, tree.num_leaves)
        pair_sum = np.bincount(inverse, values[single])
        pair_count = np.bincount(inverse).astype(np.float64)
        a, b = keys // tree.num_leaves, keys % tree.num_leaves
        joint = lca(a, b)
        for column, weights in ((3, pair_sum), (4, pair_count)):
            starts.append((a, weights, column))
            stops.append((joint, weights, column))
        for column, weights in ((5, pair_sum), (6, pair_count)):
            starts.append((b, weights, column))
            stops.append((joint, weights, column))

    junction = num_foreign > 1
    if junction.any():
        a = own[junction]
        v = values[junction]
        ones = np.ones_like(v)
        foreign_labels = np.stack(
            [np.where(d[junction], c[junction], -1) for d, c in zip(distinct, columns)], axis=1
        )
        # inner: stop at the LCA of the own label and all neighbour labels
        joint = a.copy()
        for j in range(4):
            ok = (foreign_labels[:, j] >= 0) & (joint >= 0)
            joint[ok] = lca(joint[ok], foreign_labels[ok, j])
        starts += [(a, v, 3), (a, ones, 4)]
        stops += [(joint, v, 3), (joint, ones, 4)]
        # outer: union of the neighbours' root paths, cut below the ancestors of the own label
        order_key = np.where(
            foreign_labels >= 0, enter[np.maximum(foreign_labels, 0)], np.iinfo(np.int64).max
        )
        foreign_labels = np.take_along_axis(foreign_labels, np.argsort(order_key, axis=1), axis=1)
        deepest = np.full(len(a), -1, dtype=np.int64)
        for j in range(4):
            ok = foreign_labels[:, j] >= 0
            starts += [(foreign_labels[ok, j], v[ok], 5), (foreign_labels[ok, j], ones[ok], 6)]
            with_own = np.full(len(a), -1, dtype=np.int64)
            with_own[ok] = lca(a[ok], foreign_labels[ok, j])
            replace = (with_own >= 0) & (
                (deepest < 0) | (lca.depth[np.maximum(with_own, 0)] > lca.depth[deepest])
            )
            deepest[replace] = with_own[replace]
            if j < 3:
                pair = ok & (foreign_labels[:, j + 1] >= 0)
                meet = np.full(len(a), -1, dtype=np.int64)
                meet[pair] = lca(foreign_labels[pair, j], foreign_labels[pair, j + 1])
                stops += [(meet, v, 5), (meet, ones, 6)]
        stops += [(deepest, v, 5), (deepest, ones, 6)]

    diff = leaf_stats
    for entries, sign in ((starts, 1.0), (stops, -1.0)):
        for nodes, weights, column in entries:
            keep = nodes >= 0
            diff[:, column] += sign * np.bincount(nodes[keep], weights[keep], minlength=num_nodes)
    totals = subtree_sums(tree, diff)
    return {name: totals[:, i] for i, name in enumerate(STAT_FIELDS)}


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
