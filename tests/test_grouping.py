"""Tests for oln.grouping: affinity map -> ranked proposals."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.segmentation import find_boundaries

from oln.grouping import GroupingOptions, affinity_to_proposals
from oln.grouping.hierarchy import RegionGraph, dfs_intervals, merge_hierarchy, region_adjacency
from oln.grouping.oversegment import oversegment
from oln.grouping.ranking import RANK_METHODS, candidate_statistics
from oln.grouping.spectral import globalized_boundary

FAST = dict(orientation=False, globalization=0.0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def best_iou(masks: np.ndarray, target: np.ndarray) -> float:
    return max((iou(m, target) for m in masks), default=0.0)


def two_halves() -> np.ndarray:
    """40x64 map: two plateaus (0.9) meeting at columns 31 (0.2) | 32 (0.3)."""
    affinity = np.full((40, 64), 0.9, dtype=np.float32)
    affinity[:, 31] = 0.2
    affinity[:, 32] = 0.3
    return affinity


def random_map(seed: int, shape=(60, 80)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.random(shape).astype(np.float32), (0, 0), 2)


def test_two_halves_are_the_top_proposals_with_exact_scores():
    affinity = two_halves()
    masks, scores = affinity_to_proposals(affinity, border_fraction=None, **FAST)
    left = np.zeros(affinity.shape, bool)
    left[:, :32] = True
    top_two = masks[:2]
    assert sorted([iou(top_two[0], left), iou(top_two[1], left)]) == [0.0, 1.0]
    assert best_iou(top_two, ~left) == 1.0
    # boundary mean (0.2 + 0.3) / 2 minus interior mean 0.9 -> value -0.65, score 1.65
    np.testing.assert_allclose(scores[:2], [1.65, 1.65], atol=1e-6)


def test_halves_touching_the_border_are_filtered_by_default():
    masks, _ = affinity_to_proposals(two_halves(), **FAST)
    left = np.zeros((40, 64), bool)
    left[:, :32] = True
    assert best_iou(masks, left) < 0.5 and best_iou(masks, ~left) < 0.5


def with_ring(mask: np.ndarray) -> np.ndarray:
    """The mask plus its 8-connected outer ring (a valley there is flooded from the higher inside)."""
    return mask | find_boundaries(mask, mode="outer", connectivity=2)


def nested_map() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """80x80: background 0.6, square [16:64] 0.8, disc r=10 at the centre 0.95, valleys 0.05 around both.

    Returns the map and the expected square and disc segments (each with its valley ring).
    """
    yy, xx = np.mgrid[:80, :80]
    square = (yy >= 16) & (yy < 64) & (xx >= 16) & (xx < 64)
    disc = (yy - 40) ** 2 + (xx - 40) ** 2 <= 10**2  # IoU with the square < 0.2
    affinity = np.full((80, 80), 0.6, dtype=np.float32)
    affinity[square] = 0.8
    affinity[disc] = 0.95
    affinity[find_boundaries(square, mode="outer", connectivity=2)] = 0.05
    affinity[find_boundaries(disc, mode="outer", connectivity=2)] = 0.05
    return affinity, with_ring(square), with_ring(disc)


@pytest.mark.parametrize("params", [FAST, {}], ids=["fast", "orientation+globalization"])
def test_nested_disc_and_square_both_appear(params):
    affinity, square, disc = nested_map()
    masks, scores = affinity_to_proposals(affinity, **params)
    assert best_iou(masks, disc) > 0.9
    assert best_iou(masks, square) > 0.9
    assert np.all(np.diff(scores) <= 0)


def test_border_segment_filter():
    affinity = np.full((64, 64), 0.9, dtype=np.float32)
    affinity[:10] = 0.95
    affinity[10, :] = 0.1  # valley row, flooded from the higher strip above it
    inner = np.zeros((64, 64), bool)
    inner[24:40, 24:40] = True
    affinity[inner] = 0.95
    affinity[find_boundaries(inner, mode="outer", connectivity=2)] = 0.1
    inner = with_ring(inner)
    strip = np.zeros((64, 64), bool)
    strip[:11] = True  # on the image border on 64 + 11 + 11 pixels > 0.9 x 64 inner-boundary pixels
    kept, _ = affinity_to_proposals(affinity, **FAST)
    unfiltered, _ = affinity_to_proposals(affinity, border_fraction=None, **FAST)
    assert best_iou(kept, inner) == 1.0 and best_iou(unfiltered, inner) == 1.0
    assert best_iou(kept, strip) < 0.5
    assert best_iou(unfiltered, strip) == 1.0


def test_nms_removes_near_duplicates():
    affinity = np.full((64, 64), 0.5, dtype=np.float32)
    outer = np.zeros((64, 64), bool)
    outer[10:54, 10:54] = True
    inner = np.zeros((64, 64), bool)
    inner[14:50, 14:50] = True  # IoU(inner, outer) = 38^2 / 46^2 = 0.68 with rings
    affinity[outer] = 0.9
    affinity[inner] = 0.95
    affinity[find_boundaries(outer, mode="outer", connectivity=2)] = 0.05
    affinity[find_boundaries(inner, mode="outer", connectivity=2)] = 0.6  # weak inner valley
    outer, inner = with_ring(outer), with_ring(inner)
    params = dict(footprint_size=6, **FAST)  # seeds in the 4-pixel band between the squares
    without, _ = affinity_to_proposals(affinity, nms_iou=None, **params)
    assert best_iou(without, outer) == 1.0 and best_iou(without, inner) == 1.0
    masks, _ = affinity_to_proposals(affinity, **params)
    assert (best_iou(masks, outer) == 1.0) != (best_iou(masks, inner) == 1.0)
    for i in range(len(masks)):
        for j in range(i):
            assert iou(masks[i], masks[j]) <= 0.2


def test_scores_sorted_descending_and_nms_holds_on_random_map():
    masks, scores = affinity_to_proposals(random_map(0), **FAST)
    assert masks.dtype == bool and masks.shape[1:] == (60, 80) and len(masks) == len(scores) > 3
    assert np.all(np.diff(scores) <= 0)
    for i in range(len(masks)):
        for j in range(i):
            assert iou(masks[i], masks[j]) <= 0.2 + 1e-9
    few, few_scores = affinity_to_proposals(random_map(0), max_proposals=3, **FAST)
    assert len(few) == 3 and np.array_equal(few, masks[:3]) and np.allclose(few_scores, scores[:3])


def test_channel_min_reduction():
    affinity = random_map(1)
    other = random_map(2)
    stacked = np.stack([affinity, other])
    expected, expected_scores = affinity_to_proposals(np.minimum(affinity, other), **FAST)
    masks, scores = affinity_to_proposals(stacked, **FAST)
    assert np.array_equal(masks, expected) and np.allclose(scores, expected_scores)
    ones = np.ones_like(affinity)
    masks, _ = affinity_to_proposals(np.stack([ones, affinity, ones]), **FAST)
    assert np.array_equal(masks, affinity_to_proposals(affinity, **FAST)[0])


def test_option_validation():
    with pytest.raises(ValueError, match="best_guess"):
        affinity_to_proposals(two_halves(), rank="best_guess")
    with pytest.raises(ValueError, match="edge_merge"):
        affinity_to_proposals(two_halves(), edge_merge="max")
    with pytest.raises(ValueError, match="no_such_option"):
        affinity_to_proposals(two_halves(), no_such_option=1)
    with pytest.raises(ValueError, match="shape"):
        affinity_to_proposals(np.zeros((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="ncut_typo"):
        GroupingOptions(rank="ncut_typo").validate()


@pytest.mark.parametrize("rank", RANK_METHODS)
def test_every_rank_method_runs(rank):
    masks, scores = affinity_to_proposals(nested_map()[0], rank=rank, **FAST)
    assert len(masks) > 0 and np.all(np.diff(scores) <= 0)


def test_flat_map_gives_no_proposals():
    masks, scores = affinity_to_proposals(np.zeros((30, 30), np.float32))
    assert masks.shape == (0, 30, 30) and scores.shape == (0,)


def test_edge_merge_rules():
    graph = RegionGraph(3, np.array([[0, 1], [0, 2], [1, 2]]), np.array([0.1, 0.5, 0.9]), np.array([1, 1, 3]))
    mean_tree = merge_hierarchy(graph, 1.0, "mean")
    weighted_tree = merge_hierarchy(graph, 1.0, "length_weighted")
    np.testing.assert_allclose(mean_tree.merge_weights, [0.1, 0.7])  # (0.5 + 0.9) / 2
    np.testing.assert_allclose(weighted_tree.merge_weights, [0.1, 0.8])  # (0.5 * 1 + 0.9 * 3) / 4
    assert mean_tree.parent.tolist() == [3, 3, 4, 4, -1]
    assert merge_hierarchy(graph, 0.5).parent.tolist() == [3, 3, -1, -1]


@pytest.mark.parametrize("seed, quantile", [(0, None), (1, 0.5)])
def test_tree_statistics_equal_full_image_passes(seed, quantile):
    """Statistics accumulated through the tree match GGN's per-mask find_boundaries definition."""
    affinity = random_map(seed)
    labels = oversegment(affinity, footprint_size=5)
    graph = region_adjacency(labels, 1 - affinity)
    threshold = 1.0 if quantile is None else float(np.quantile(graph.weights, quantile))
    tree = merge_hierarchy(graph, threshold)
    stats = candidate_statistics(labels, affinity, tree)
    enter, leave = dfs_intervals(tree)
    leaf_enter = enter[: tree.num_leaves]
    for node in range(tree.num_nodes):
        mask = ((leaf_enter >= enter[node]) & (leaf_enter <= leave[node]))[labels]
        thick = find_boundaries(mask, mode="thick")
        inner = find_boundaries(mask, mode="inner")
        outer = thick & ~mask
        assert stats["area"][node] == mask.sum()
        assert stats["inner_count"][node] == inner.sum()
        assert stats["outer_count"][node] == outer.sum()
        assert np.isclose(stats["inner_sum"][node], affinity[inner].sum(), atol=1e-4)
        assert np.isclose(stats["outer_sum"][node], affinity[outer].sum(), atol=1e-4)
        border = mask[0].sum() + mask[-1].sum() + mask[:, 0].sum() + mask[:, -1].sum()
        assert stats["border"][node] == border


def test_region_adjacency_mean_boundary_strength():
    labels = np.zeros((4, 6), np.int32)
    labels[:, 3:] = 1
    strength = np.zeros((4, 6), np.float32)
    strength[:, 2] = 0.2
    strength[:, 3] = 0.4
    graph = region_adjacency(labels, strength)
    assert graph.edges.tolist() == [[0, 1]]
    np.testing.assert_allclose(graph.weights, [0.3])
    assert graph.lengths.tolist() == [8]


def test_downsampled_globalization_close_to_exact():
    affinity, _, _ = nested_map()
    exact = globalized_boundary(1 - affinity, solver="shift_invert")
    approx = globalized_boundary(1 - affinity, solver="pooled", max_pixels=1600)  # 2x max-pooled graph
    assert exact.shape == approx.shape == affinity.shape
    assert exact.max() == pytest.approx(1.0) and approx.max() == pytest.approx(1.0)
    assert np.corrcoef(exact.ravel(), approx.ravel())[0, 1] > 0.7


def test_extraction_max_side_downsizes_with_a_log_line_and_masks_come_back_full_size(tmp_path, caplog):
    import dataclasses
    import logging

    from PIL import Image
    from pycocotools import mask as mask_utils

    from oln.pseudo.extract import _read_batch, group_image

    Image.fromarray(np.zeros((90, 120, 3), np.uint8)).save(tmp_path / "a.png")
    info = {"id": 7, "file_name": "a.png", "height": 90, "width": 120}
    with caplog.at_level(logging.INFO, logger="oln.pseudo.extract"):
        (readable, unreadable) = _read_batch([info], tmp_path, max_side=60)
    assert not unreadable and readable[0][1].shape == (3, 45, 60) and readable[0][2] == (90, 120)
    assert "max_side=60" in caplog.text and "90x120" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="oln.pseudo.extract"):
        _read_batch([info], tmp_path, max_side=None)
    assert "max_side" not in caplog.text

    small = cv2.resize(two_halves(), (60, 45), interpolation=cv2.INTER_NEAREST)  # the affinity at max_side
    grouping = dataclasses.asdict(GroupingOptions(border_fraction=None, **FAST))
    records = group_image(small, (90, 120), grouping, 2, 7, "train", [])
    masks, _ = affinity_to_proposals(small, border_fraction=None, max_proposals=2, **FAST)
    assert len(records) == 2
    for record, mask in zip(records, masks):
        full = mask_utils.decode(record["segmentation"]).astype(bool)
        assert full.shape == (90, 120)
        assert np.array_equal(full, cv2.resize(mask.astype(np.uint8), (120, 90), interpolation=cv2.INTER_NEAREST) > 0)


# --- exact-equivalence checks of the fast implementations against plain reference versions ---


def test_find_seeds_equal_skimage_peak_local_max():
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    from oln.grouping.oversegment import find_seeds

    rng = np.random.default_rng(3)
    for trial in range(40):
        shape = tuple(rng.integers(1, 40, 2))
        affinity = rng.random(shape).astype(np.float32)
        if trial % 2:  # plateaus and ties
            affinity = np.round(affinity * 3) / 3
        for size in (1, 2, 5, 20):
            coords = peak_local_max(affinity, footprint=np.ones((size, size), bool))
            peaks = np.zeros(shape, bool)
            peaks[tuple(coords.T)] = True
            expected, _ = ndi.label(peaks)
            expected[affinity <= 0.5 * affinity.max()] = 0
            assert np.array_equal(find_seeds(affinity, size, 0.5), expected)


def reference_merge(graph: RegionGraph, threshold: float) -> tuple[list, list, list]:
    """GGN's greedy merge, written plainly: a heap of (weight, a, b) tuples, mean edge rule."""
    import heapq

    neighbours = [dict() for _ in range(graph.num_regions)]
    heap = []
    for (a, b), w in zip(graph.edges.tolist(), graph.weights.tolist()):
        neighbours[a][b] = neighbours[b][a] = w
        heap.append((w, a, b))
    heapq.heapify(heap)
    parent, children, weights = [-1] * graph.num_regions, [], []
    while heap:
        w, a, b = heapq.heappop(heap)
        if w >= threshold:
            break
        if parent[a] >= 0 or parent[b] >= 0:
            continue
        new = len(parent)
        parent[a] = parent[b] = new
        parent.append(-1)
        children.append([a, b])
        weights.append(w)
        merged = {}
        for other in (neighbours[a].keys() | neighbours[b].keys()) - {a, b}:
            wa, wb = neighbours[a].get(other), neighbours[b].get(other)
            merged[other] = wa if wb is None else wb if wa is None else (wa + wb) / 2.0
            neighbours[other].pop(a, None)
            neighbours[other].pop(b, None)
            neighbours[other][new] = merged[other]
            heapq.heappush(heap, (merged[other], new, other))
        neighbours.append(merged)
    return parent, children, weights


@pytest.mark.parametrize("levels", [2, 5, None], ids=["ties", "some_ties", "distinct"])
def test_merge_order_equals_plain_tuple_heap(levels):
    rng = np.random.default_rng(7)
    for _ in range(30):
        labels = rng.integers(0, int(rng.integers(2, 40)), tuple(rng.integers(2, 10, 2))).astype(np.int32)
        labels = np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int32)
        graph = region_adjacency(labels, rng.random(labels.shape).astype(np.float32))
        if levels is not None:  # many equal weights, and equal averages of them
            graph.weights = rng.integers(0, levels, graph.weights.size) / (levels - 1)
        for threshold in (1.5, 0.5):
            tree = merge_hierarchy(graph, threshold)
            parent, children, weights = reference_merge(graph, threshold)
            assert tree.parent.tolist() == parent
            assert tree.children.tolist() == children
            assert tree.merge_weights.tolist() == weights


def test_lowest_common_ancestor_equals_ancestor_walk():
    from oln.grouping.hierarchy import LowestCommonAncestor

    affinity = random_map(4)
    labels = oversegment(affinity, footprint_size=5)
    graph = region_adjacency(labels, 1 - affinity)
    tree = merge_hierarchy(graph, float(np.quantile(graph.weights, 0.7)))  # a forest
    parent = tree.parent.tolist()

    def ancestors(node):
        path = [node]
        while parent[path[-1]] >= 0:
            path.append(parent[path[-1]])
        return path

    rng = np.random.default_rng(0)
    u, v = rng.integers(0, tree.num_nodes, (2, 300))
    expected = [next((x for x in ancestors(a) if x in set(ancestors(b))), -1) for a, b in zip(u, v)]
    assert LowestCommonAncestor(tree)(u, v).tolist() == expected
    assert (np.asarray(expected) == -1).any() and (np.asarray(expected) >= 0).any()


def test_region_adjacency_equals_neighbourhood_definition():
    from scipy import ndimage as ndi

    rng = np.random.default_rng(5)
    labels = oversegment(random_map(6), footprint_size=4)
    strength = rng.random(labels.shape).astype(np.float32)
    graph = region_adjacency(labels, strength)
    eroded = ndi.minimum_filter(labels, size=3, mode="nearest")
    dilated = ndi.maximum_filter(labels, size=3, mode="nearest")
    sums: dict[tuple[int, int], list[float]] = {}
    for y, x in zip(*np.nonzero(eroded != labels)):
        sums.setdefault((eroded[y, x], labels[y, x]), []).append(float(strength[y, x]))
    for y, x in zip(*np.nonzero(dilated != labels)):
        sums.setdefault((labels[y, x], dilated[y, x]), []).append(float(strength[y, x]))
    assert graph.edges.tolist() == sorted([list(k) for k in sums])
    assert graph.lengths.tolist() == [len(sums[tuple(e)]) for e in graph.edges.tolist()]
    means = [np.mean(sums[tuple(e)]) for e in graph.edges.tolist()]
    np.testing.assert_allclose(graph.weights, means, rtol=1e-12)
