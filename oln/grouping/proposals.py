"""Affinity map -> ranked mask proposals (GGN's released extraction setting by default).

Pipeline: min over channels -> watershed superpixels -> boundary map (optionally
orientation-aligned and spectrally globalised) -> region adjacency graph ->
greedy merging (every node of the merge tree is a candidate) -> per-candidate
statistics through the tree -> ranking, size / image-border filters, nested-set
NMS -> top-k masks materialised through a label-map lookup.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from oln.grouping.eigensolver import EigenSolverOptions
from oln.grouping.hierarchy import (
    EDGE_MERGE_RULES,
    LowestCommonAncestor,
    MergeTree,
    dfs_intervals,
    merge_hierarchy,
    region_adjacency,
)
from oln.grouping.orientation import orientation_aligned_boundary
from oln.grouping.oversegment import oversegment, reduce_affinity, thick_boundaries
from oln.grouping.ranking import candidate_statistics, check_rank_method, rank_values
from oln.grouping.spectral import SPECTRAL_SOLVERS, globalized_boundary

RANK_POTENTIALS = ("affinity", "refined")


@dataclass
class GroupingOptions:
    """Parameters of `affinity_to_proposals` (defaults = GGN's `pa_to_masks` extraction block).

    Attributes:
        seed_threshold: watershed seeds kept where affinity > seed_threshold x max (GGN edge_thresh).
        footprint_size: side of the square window a seed must be the maximum of.
        orientation: weight watershed-line boundary strength by orientation agreement (use_orientation).
        globalization: weight of the spectral boundary in the combined boundary map; 0 = off.
        spectral_vectors: eigenvectors for globalisation (incl. the dropped constant one).
        spectral_gamma: affinity scale exp(-boundary / gamma) of the spectral graph.
        spectral_solver: "multilevel" (the pixel graph, multilevel LOBPCG: fast) | "pooled"
            (a graph max-pooled to <= spectral_max_pixels nodes: approximate) | "shift_invert"
            (the pixel graph by LU-based Lanczos: the slow reference).
        spectral_max_pixels: node limit of the "pooled" solver; None = no pooling.
        spectral_tol: "multilevel": a level's iterations stop when every eigenpair's relative
            residual is below this.
        spectral_iterations: "multilevel": LOBPCG iterations at most on its finest level.
        merge_threshold: merge while the lowest edge weight is below this (GGN join_thresh).
        edge_merge: "mean" (GGN: average of the two merged edges) | "length_weighted".
        rank: boundary | inside | inside_minus_boundary | boundary_minus_inside | ncut.
        rank_potential: "affinity" (GGN use_new_affinity=False) | "refined" (boundary map on
            watershed lines, affinity elsewhere).
        border_fraction: drop a candidate whose pixels on the image border exceed this
            fraction of its inner-boundary pixels (GGN filter_by_edge method 2); None = off.
        min_size: drop candidates with fewer pixels (GGN min_component_size).
        nms_iou: greedy mask NMS threshold (suppress IoU > nms_iou); None or >= 1 = off.
        max_proposals: keep at most this many; None = all.
    """

    seed_threshold: float = 0.0
    footprint_size: int = 20
    orientation: bool = True
    globalization: float = 0.5
    spectral_vectors: int = 16
    spectral_gamma: float = 0.12
    spectral_solver: str = "multilevel"
    spectral_max_pixels: int | None = 60_000
    spectral_tol: float = 0.3
    spectral_iterations: int = 4
    merge_threshold: float = 1.0
    edge_merge: str = "mean"
    rank: str = "boundary_minus_inside"
    rank_potential: str = "affinity"
    border_fraction: float | None = 0.9
    min_size: int = 0
    nms_iou: float | None = 0.2
    max_proposals: int | None = 100

    def validate(self) -> None:
        """Raise ValueError for an unknown named option or out-of-range value."""
        check_rank_method(self.rank)
        if self.edge_merge not in EDGE_MERGE_RULES:
            raise ValueError(f"unknown edge_merge {self.edge_merge!r}; expected one of {EDGE_MERGE_RULES}")
        if self.rank_potential not in RANK_POTENTIALS:
            raise ValueError(
                f"unknown rank_potential {self.rank_potential!r}; expected one of {RANK_POTENTIALS}"
            )
        if self.spectral_solver not in SPECTRAL_SOLVERS:
            raise ValueError(
                f"unknown spectral_solver {self.spectral_solver!r}; expected one of {SPECTRAL_SOLVERS}"
            )
        if not 0.0 <= self.globalization <= 1.0:
            raise ValueError(f"globalization must be in [0, 1], got {self.globalization}")
        if self.footprint_size < 1:
            raise ValueError(f"footprint_size must be >= 1, got {self.footprint_size}")


def _make_options(options: GroupingOptions | None, params: dict) -> GroupingOptions:
    options = options or GroupingOptions()
    known = {f.name for f in dataclasses.fields(GroupingOptions)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown grouping parameter(s) {unknown}; expected some of {sorted(known)}")
    options = dataclasses.replace(options, **params)
    options.validate()
    return options


def boundary_map(affinity: np.ndarray, labels: np.ndarray, options: GroupingOptions) -> np.ndarray:
    """Boundary strength used for the region graph: 1 - affinity, optionally aligned / globalised."""
    if options.orientation:
        boundary = orientation_aligned_boundary(affinity, labels)
    else:
        boundary = 1.0 - affinity
    if options.globalization > 0:
        solver_options = EigenSolverOptions(tol=options.spectral_tol, finest_iterations=options.spectral_iterations)
        spectral = globalized_boundary(
            boundary,
            options.spectral_vectors,
            options.spectral_gamma,
            solver=options.spectral_solver,
            max_pixels=options.spectral_max_pixels,
            solver_options=solver_options,
        )
        boundary = (1.0 - options.globalization) * boundary + options.globalization * spectral
    return boundary.astype(np.float32)


def _nested_nms(
    order: np.ndarray,
    area: np.ndarray,
    enter: np.ndarray,
    leave: np.ndarray,
    iou: float | None,
    limit: int | None,
) -> list[int]:
    """Greedy NMS over tree nodes: two nodes overlap only when nested, with IoU = small / large area."""
    kept: list[int] = []
    limit = limit if limit is not None else len(order)
    for node in order.tolist():
        if len(kept) >= limit:
            break
        if iou is not None and iou < 1.0 and kept:
            k = np.asarray(kept)
            nested = ((enter[k] <= enter[node]) & (enter[node] <= leave[k])) | (
                (enter[node] <= enter[k]) & (enter[k] <= leave[node])
            )
            if nested.any():
                ratio = np.minimum(area[k[nested]], area[node]) / np.maximum(area[k[nested]], area[node])
                if (ratio > iou).any():
                    continue
        kept.append(node)
    return kept


def _leaf_boxes(labels: np.ndarray, num_leaves: int) -> np.ndarray:
    """Bounding box (y0, y1, x0, x1), end-exclusive, of every superpixel, from its horizontal runs."""
    height, width = labels.shape
    starts = np.ones((height, width), dtype=bool)
    starts[:, 1:] = labels[:, 1:] != labels[:, :-1]
    ends = np.ones((height, width), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first, last = np.flatnonzero(starts), np.flatnonzero(ends)
    run_labels = labels.ravel()[first]
    row, first_col = np.divmod(first, width)
    boxes = np.empty((num_leaves, 4), dtype=np.int64)
    boxes[:, [0, 2]] = np.iinfo(np.int64).max
    boxes[:, [1, 3]] = -1
    np.minimum.at(boxes[:, 0], run_labels, row)
    np.maximum.at(boxes[:, 1], run_labels, row + 1)
    np.minimum.at(boxes[:, 2], run_labels, first_col)
    np.maximum.at(boxes[:, 3], run_labels, last % width + 1)
    return boxes


def _materialise(
    labels: np.ndarray, tree: MergeTree, nodes: list[int], enter: np.ndarray, leave: np.ndarray
) -> np.ndarray:
    """Full-resolution bool masks (N, H, W) of tree nodes, filled inside their bounding box.

    With superpixels relabelled by DFS entry index, a node's mask is the range test
    enter[node] <= label <= leave[node].
    """
    height, width = labels.shape
    masks = np.zeros((len(nodes), height, width), dtype=bool)
    leaf_enter = enter[: tree.num_leaves]
    boxes = _leaf_boxes(labels, tree.num_leaves)
    dtype = np.uint16 if tree.num_nodes <= np.iinfo(np.uint16).max else np.uint32
    dfs_labels = leaf_enter.astype(dtype)[labels]
    for i, node in enumerate(nodes):
        members = (leaf_enter >= enter[node]) & (leaf_enter <= leave[node])
        y0, x0 = boxes[members, 0].min(), boxes[members, 2].min()
        y1, x1 = boxes[members, 1].max(), boxes[members, 3].max()
        offset = dfs_labels[y0:y1, x0:x1] - dtype(enter[node])  # wraps around below enter[node]
        np.less_equal(offset, dtype(leave[node] - enter[node]), out=masks[i, y0:y1, x0:x1])
    return masks


def affinity_to_proposals(
    affinity: np.ndarray, options: GroupingOptions | None = None, **params
) -> tuple[np.ndarray, np.ndarray]:
    """Turn a predicted affinity map into ranked mask proposals.

    Args:
        affinity: float (H, W) or (C, H, W) (reduced by min over C) in [0, 1], high inside objects.
        options: GroupingOptions; keyword `params` override its fields (e.g. rank="ncut").
    Returns:
        masks: bool (N, H, W), best first; scores: float64 (N,), descending (1 - rank value).
    """
    options = _make_options(options, params)
    affinity = reduce_affinity(affinity)
    height, width = affinity.shape
    empty = (np.zeros((0, height, width), dtype=bool), np.zeros(0, dtype=np.float64))
    labels = oversegment(affinity, options.footprint_size, options.seed_threshold)
    if labels is None or labels.max() < 1:
        return empty
    boundary = boundary_map(affinity, labels, options)
    tree = merge_hierarchy(region_adjacency(labels, boundary), options.merge_threshold, options.edge_merge)
    potential = affinity
    if options.rank_potential == "refined":
        lines = thick_boundaries(labels)
        potential = np.where(lines, 1.0 - boundary, affinity).astype(np.float32)
    enter, leave = dfs_intervals(tree)
    stats = candidate_statistics(labels, potential, tree, LowestCommonAncestor(tree, enter), enter)
    values = rank_values(stats, options.rank)
    keep = stats["area"] >= max(options.min_size, 1)
    if options.border_fraction is not None:
        keep &= ~(stats["border"] > options.border_fraction * stats["inner_count"])
    candidates = np.flatnonzero(keep)
    order = candidates[np.argsort(values[candidates], kind="stable")]
    kept = _nested_nms(order, stats["area"], enter, leave, options.nms_iou, options.max_proposals)
    if not kept:
        return empty
    masks = _materialise(labels, tree, kept, enter, leave)
    scores = 1.0 - values[kept]
    return masks, scores
