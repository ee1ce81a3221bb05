"""Greedy COCOeval matching of one image, vectorised over area ranges and IoU thresholds.

Each (area range, IoU threshold) pair is a "lane": an independent run of
pycocotools' greedy matching. Detections are visited best first; in every lane
a detection takes the available ground truth (GT) with the highest IoU at or
above the threshold, preferring GT that is not ignored (crowd, out of area
range, seen category) over GT that is; ties go to the later GT, exactly as
COCOeval. A matched non-crowd GT is no longer available; crowd GT stay
available. Only detections that reach the lowest threshold on some GT are
visited, and all lanes are updated together with numpy.

Seen-category removal (when the image has seen GT) runs as extra lanes, one per
area range, at the removal threshold: a detection whose match there is a seen
GT is removed from that area range's list (it neither matches anything nor
counts towards the budget k). With `rematch=True` removed detections take no
part in the recall lanes; with `rematch=False` (OLN's code) they still match in
the recall lanes, where their matches are then discarded.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

NO_MATCH = np.iinfo(np.int64).max
_MAX_IOU_THRESHOLD = 1 - 1e-10  # COCOeval caps the threshold so IoU == 1 still matches at t == 1


def compute_ious(dt_geometry, gt_geometry, gt_crowd: np.ndarray) -> np.ndarray:
    """IoU matrix (D, G) from pycocotools' C code; crowd GT use intersection over detection area."""
    num_dt, num_gt = len(dt_geometry), len(gt_geometry)
    if num_dt == 0 or num_gt == 0:
        return np.zeros((num_dt, num_gt), dtype=np.float64)
    ious = mask_utils.iou(dt_geometry, gt_geometry, [int(c) for c in gt_crowd])
    return np.asarray(ious, dtype=np.float64).reshape(num_dt, num_gt)


def match_ranks(
    ious: np.ndarray,
    gt_crowd: np.ndarray,
    gt_seen: np.ndarray,
    gt_ignore: np.ndarray,
    iou_thresholds: np.ndarray,
    removal_threshold: float,
    rematch: bool = True,
) -> np.ndarray:
    """Rank of the detection that found each GT, per area range and IoU threshold.

    Args:
        ious: (D, G) IoUs, detections best first.
        gt_crowd: (G,) bool, crowd GT (can match many detections).
        gt_seen: (G,) bool, seen-category GT (their detections are removed).
        gt_ignore: (A, G) bool, GT ignored in each area range (crowd, out of range or seen).
        iou_thresholds: (T,) thresholds.
        removal_threshold: threshold at which a match to seen GT removes a detection.
        rematch: re-run matching without removed detections (else OLN's single pass).

    Returns:
        (A, T, G) int64: 0-based position, in the area range's list after removals,
        of the detection matched to each non-ignored GT; NO_MATCH where unmatched or ignored.
    """
    num_areas, num_gt = gt_ignore.shape
    thresholds = np.minimum(np.asarray(iou_thresholds, dtype=np.float64), _MAX_IOU_THRESHOLD)
    num_thr = len(thresholds)
    ranks = np.full((num_areas * num_thr, num_gt), NO_MATCH, dtype=np.int64)
    if ious.size == 0:
        return ranks.reshape(num_areas, num_thr, num_gt)
    removal_threshold = min(float(removal_threshold), _MAX_IOU_THRESHOLD)
    use_removal = bool(gt_seen.any())
    lowest = min(thresholds.min(), removal_threshold) if use_removal else thresholds.min()
    reaches = ious >= lowest
    candidates = np.flatnonzero(reaches.any(axis=1))
    if candidates.size == 0:
        return ranks.reshape(num_areas, num_thr, num_gt)
    lanes = _Lanes(ious[candidates], gt_crowd, gt_seen, gt_ignore, thresholds,
                   removal_threshold if use_removal else None, rematch, ranks)
    # Most detections reach only one GT: then every lane's choice is that GT (fast path).
    reach_count = reaches[candidates].sum(axis=1)
    only_gt = np.where(reach_count == 1, reaches[candidates].argmax(axis=1), -1)
    for cand, (det_rank, gt) in enumerate(zip(candidates.tolist(), only_gt.tolist())):
        if gt >= 0:
            lanes.match_one_gt(cand, det_rank, gt)
        else:
            lanes.match_any_gt(cand, det_rank)
    return ranks.reshape(num_areas, num_thr, num_gt)


class _Lanes:
    """Matching state of all lanes of one image: removal lanes (if any) then recall lanes."""

    def __init__(self, cand_ious, gt_crowd, gt_seen, gt_ignore, thresholds, removal_threshold,
                 rematch, ranks):
        num_areas, num_gt = gt_ignore.shape
        num_thr = len(thresholds)
        self.num_areas = num_areas
        self.cand_ious = cand_ious
        self.crowd, self.seen, self.rematch, self.ranks = gt_crowd, gt_seen, rematch, ranks
        self.use_removal = removal_threshold is not None
        recall_area = np.repeat(np.arange(num_areas), num_thr)
        lane_thr = np.tile(thresholds, num_areas)
        if self.use_removal:
            lane_area = np.concatenate([np.arange(num_areas), recall_area])
            lane_thr = np.concatenate([np.full(num_areas, removal_threshold), lane_thr])
        else:
            lane_area = recall_area
        self.first_recall = num_areas if self.use_removal else 0
        self.recall_area = recall_area
        self.lane_area = lane_area
        self.lane_thr = lane_thr[:, None]
        self.lanes = np.arange(len(lane_area))
        self.is_recall_lane = self.lanes >= self.first_recall
        self.not_ignored = ~gt_ignore[lane_area]  # (L, G)
        self.available = np.ones((len(lane_area), num_gt), dtype=bool)
        self.removed_before = np.zeros(num_areas, dtype=np.int64)
        # Threshold reached by each candidate's best IoU, per lane (used by the one-GT path).
        self.reaches_best = cand_ious.max(axis=1)[:, None] >= lane_thr[None, :]  # (C, L)
        # Dense integer ranks of the IoUs: exact comparisons after adding a not-ignored bonus.
        _, inverse = np.unique(cand_ious, return_inverse=True)
        self.iou_order = inverse.reshape(cand_ious.shape).astype(np.int64)
        self.lane_bonus = self.not_ignored * np.int64(cand_ious.size + 1)

    def match_one_gt(self, cand: int, det_rank: int, gt: int) -> None:
        """Detection `det_rank` reaches only `gt`: in each lane it matches `gt` if available."""
        matched = self.available[:, gt] & self.reaches_best[cand]
        if not np.count_nonzero(matched):
            return
        first = self.first_recall
        if self.seen[gt]:  # ignored everywhere: only removal and availability change
            removed = matched[:first]
            taken = matched.copy()
            if self.rematch:
                taken[first:] &= ~removed[self.recall_area]
            if not self.crowd[gt]:
                self.available[taken, gt] = False
            self.removed_before += removed
            return
        if not self.crowd[gt]:
            self.available[matched, gt] = False
        found = np.flatnonzero(matched[first:] & self.not_ignored[first:, gt])
        if found.size:
            self.ranks[found, gt] = det_rank - self.removed_before[self.recall_area[found]]

    def match_any_gt(self, cand: int, det_rank: int) -> None:
        """General case: each lane takes its best available GT (not-ignored first, ties to the later)."""
        row = self.cand_ious[cand]
        ok = self.available & (row >= self.lane_thr)
        key = np.where(ok, self.iou_order[cand] + self.lane_bonus, -1)
        choice = key.shape[1] - 1 - key[:, ::-1].argmax(axis=1)
        matched = ok[self.lanes, choice]
        if not np.count_nonzero(matched):
            return
        recorded = applies = matched
        removed = None
        if self.use_removal:
            removed = matched[: self.num_areas] & self.seen[choice[: self.num_areas]]
            recorded = matched & (~removed[self.lane_area] | ~self.is_recall_lane)
            applies = recorded if self.rematch else matched
        taken = applies & ~self.crowd[choice]
        self.available[self.lanes[taken], choice[taken]] = False
        found = np.flatnonzero(recorded & self.is_recall_lane & self.not_ignored[self.lanes, choice])
        if found.size:
            position = det_rank - self.removed_before[self.lane_area[found]]
            self.ranks[found - self.first_recall, choice[found]] = position
        if removed is not None:
            self.removed_before += removed


def found_counts(ranks: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """(A, T, K) number of GT found within the first k detections, from `match_ranks` output."""
    return (ranks[..., None] < ks).sum(axis=2)
