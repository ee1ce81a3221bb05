"""Multigrid hierarchy for weighted pixel-grid Laplacians (used by the spectral eigensolver).

The coarse grid of every level is every other pixel in both directions. Fine
values are interpolated from coarse ones with weights taken from the operator
itself (operator-dependent interpolation in the style of Dendy's black-box
multigrid): a pixel between two coarse pixels takes them in proportion to its
conductances towards them, so a value never leaks across a weak (boundary) edge.
Coarse operators are Galerkin products P^T A P (9-point stencils); the coarse
mass is the lumped P^T m. Block vectors are (n, k) arrays. The V-cycle preconditioner runs in
float32 (half the memory traffic of its sparse products; a preconditioner needs no more), the
hierarchy itself is float64.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse import linalg as sparse_linalg

_OFFSETS = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]


def grid_laplacian(node_weights: np.ndarray) -> tuple[sparse.csr_matrix, np.ndarray]:
    """5-point graph Laplacian of a pixel grid with edge weight min(a_p, a_q), and its mass.

    Args:
        node_weights: float (H, W) per-pixel affinity a in (0, 1].
    Returns:
        L: csr (H*W, H*W); mass: float64 (H*W,) = 1 + degree (each pixel's self-affinity counts).
    """
    a = np.asarray(node_weights, dtype=np.float64)
    height, width = a.shape
    east = np.zeros((height, width))
    east[:, :-1] = np.minimum(a[:, 1:], a[:, :-1])
    south = np.zeros((height, width))
    south[:-1] = np.minimum(a[1:], a[:-1])
    degree = east + south
    degree[:, 1:] += east[:, :-1]
    degree[1:] += south[:-1]
    e, s = east.ravel(), south.ravel()
    n = height * width
    laplacian = sparse.diags(
        [-s[:-width], -e[:-1], degree.ravel(), -e[:-1], -s[:-width]],
        [-width, -1, 0, 1, width],
        shape=(n, n),
        format="csr",
    )
    return laplacian, 1.0 + degree.ravel()


def conductances(operator: sparse.csr_matrix, shape: tuple[int, int]) -> dict[tuple[int, int], np.ndarray]:
    """Off-diagonal couplings max(-A[p, p + offset], 0) of a <= 9-point grid operator, per offset.

    Returns:
        {(di, dj): float64 (H, W)}, zero where the neighbour lies outside the grid; offsets
        without any coupling (e.g. the diagonals of a 5-point stencil) are left out.
    """
    height, width = shape
    out = {}
    for di, dj in _OFFSETS:
        k = di * width + dj
        diagonal = operator.diagonal(k)
        if not (diagonal < 0).any():
            continue
        values = np.zeros(height * width)
        if k >= 0:
            values[: diagonal.size] = diagonal
        else:
            values[-k:] = diagonal
        values = np.maximum(-values, 0.0).reshape(height, width)
        if dj:  # a row-major offset of +-1 column wraps around at the grid's right / left edge
            values[:, -1 if dj > 0 else 0] = 0.0
        if di:
            values[-1 if di > 0 else 0] = 0.0
        out[(di, dj)] = values
    return out


def _normalise(weights: list[np.ndarray], exists: list[np.ndarray]) -> list[np.ndarray]:
    """Weights divided by their sum; equal weights over existing neighbours where the sum is 0."""
    total = sum(weights)
    flat = total <= 0
    count = np.maximum(sum(e.astype(np.float64) for e in exists), 1.0)
    return [np.where(flat, e / count, w / np.where(flat, 1.0, total)) for w, e in zip(weights, exists)]


def interpolation(operator: sparse.csr_matrix, shape: tuple[int, int]) -> tuple[sparse.csr_matrix, tuple]:
    """Operator-dependent prolongation P (fine x coarse) from the even-even pixels.

    Args:
        operator: symmetric grid operator with a <= 9-point stencil on `shape`.
        shape: fine grid (H, W).
    Returns:
        P (csr, rows sum to 1); coarse grid shape ((H + 1) // 2, (W + 1) // 2).
    """
    height, width = shape
    rows_c, cols_c = (height + 1) // 2, (width + 1) // 2
    # pad the fine grid to (2 rows_c + 1, 2 cols_c + 1): every fine pixel then has coarse pixels on all
    # sides, the padded (virtual) ones with zero coupling
    pad_h, pad_w = 2 * rows_c + 1, 2 * cols_c + 1
    c: dict[tuple[int, int], np.ndarray | float] = dict.fromkeys(_OFFSETS, 0.0)
    for key, values in conductances(operator, shape).items():
        c[key] = np.zeros((pad_h, pad_w))
        c[key][:height, :width] = values
    coarse_id = np.full((rows_c + 1, cols_c + 1), -1, dtype=np.int32)
    coarse_id[:rows_c, :cols_c] = np.arange(rows_c * cols_c).reshape(rows_c, cols_c)
    fine_id = np.full((pad_h, pad_w), -1, dtype=np.int32)
    fine_id[:height, :width] = np.arange(height * width).reshape(height, width)

    def side(offsets, sl):
        return sum(c[o][sl] if isinstance(c[o], np.ndarray) else 0.0 for o in offsets)

    west, east = [(-1, -1), (0, -1), (1, -1)], [(-1, 1), (0, 1), (1, 1)]
    north, south = [(-1, -1), (-1, 0), (-1, 1)], [(1, -1), (1, 0), (1, 1)]
    h_sl, v_sl, x_sl = np.s_[0::2, 1::2], np.s_[1::2, 0::2], np.s_[1::2, 1::2]
    # pixels between two coarse pixels of a row (h: (R + 1, C)) / of a column (v: (R, C + 1))
    h_ids = [coarse_id[:, :-1], coarse_id[:, 1:]]
    h_w = _normalise([side(west, h_sl), side(east, h_sl)], [ids >= 0 for ids in h_ids])
    v_ids = [coarse_id[:-1, :], coarse_id[1:, :]]
    v_w = _normalise([side(north, v_sl), side(south, v_sl)], [ids >= 0 for ids in v_ids])
    # cell centres: their 8 neighbours, the 4 edge pixels replaced by their own interpolation
    cx = {o: c[o][x_sl] if isinstance(c[o], np.ndarray) else 0.0 for o in _OFFSETS}
    nw = cx[(-1, -1)] + cx[(-1, 0)] * h_w[0][:-1] + cx[(0, -1)] * v_w[0][:, :-1]
    ne = cx[(-1, 1)] + cx[(-1, 0)] * h_w[1][:-1] + cx[(0, 1)] * v_w[0][:, 1:]
    sw = cx[(1, -1)] + cx[(1, 0)] * h_w[0][1:] + cx[(0, -1)] * v_w[1][:, :-1]
    se = cx[(1, 1)] + cx[(1, 0)] * h_w[1][1:] + cx[(0, 1)] * v_w[1][:, 1:]
    x_ids = [coarse_id[:-1, :-1], coarse_id[:-1, 1:], coarse_id[1:, :-1], coarse_id[1:, 1:]]
    x_w = _normalise([nw, ne, sw, se], [ids >= 0 for ids in x_ids])

    parts = [(fine_id[0::2, 0::2], coarse_id, np.ones(coarse_id.shape))]
    parts += [(fine_id[h_sl], h_ids[i], h_w[i]) for i in range(2)]
    parts += [(fine_id[v_sl], v_ids[i], v_w[i]) for i in range(2)]
    parts += [(fine_id[x_sl], x_ids[i], x_w[i]) for i in range(4)]
    rows, cols, vals = (np.concatenate([p[i].ravel() for p in parts]) for i in range(3))
    keep = (rows >= 0) & (cols >= 0) & (vals > 0)
    prolongation = sparse.csr_matrix(
        (vals[keep], (rows[keep], cols[keep])), shape=(height * width, rows_c * cols_c)
    )
    return prolongation, (rows_c, cols_c)


class GridHierarchy:
    """Levels 0 (the pixel grid) .. n of Galerkin operators and prolongations.

    Level l + 1 holds P^T L P and the consistent mass P^T M P of level l, so Rayleigh-Ritz on
    level l + 1 equals Rayleigh-Ritz on the pixel grid over the interpolated subspace.

    Attributes:
        laplacians, masses (sparse), lumped_masses (row sums), shapes: per level;
        prolongations[l] maps level l + 1 to level l.
    """

    def __init__(self, laplacian: sparse.csr_matrix, mass: np.ndarray, shape: tuple[int, int], min_nodes: int):
        """Coarsen until a level has at most `min_nodes` nodes (or a side of 2 pixels)."""
        self.laplacians = [laplacian]
        self.masses = [sparse.diags(mass, format="csr")]
        self.lumped_masses = [np.asarray(mass, dtype=np.float64)]
        self.shapes = [tuple(shape)]
        self.prolongations: list[sparse.csr_matrix] = []
        self._restrictions: list[sparse.csr_matrix] = []
        self._prolongations32: list[sparse.csr_matrix] = []
        self._restrictions32: list[sparse.csr_matrix] = []
        while self.lumped_masses[-1].size > min_nodes and min(self.shapes[-1]) > 2:
            prolongation, coarse_shape = interpolation(self.laplacians[-1], self.shapes[-1])
            restriction = prolongation.T.tocsr()
            self.prolongations.append(prolongation)
            self._restrictions.append(restriction)
            self._prolongations32.append(prolongation.astype(np.float32))
            self._restrictions32.append(restriction.astype(np.float32))
            self.laplacians.append((restriction @ self.laplacians[-1] @ prolongation).tocsr())
            self.masses.append((restriction @ self.masses[-1] @ prolongation).tocsr())
            self.lumped_masses.append(restriction @ self.lumped_masses[-1])
            self.shapes.append(coarse_shape)
        self._operators: dict[int, tuple[sparse.csr_matrix, np.ndarray]] = {}

    def release_below(self, level: int) -> None:
        """Free the operators of the levels finer than `level` (their prolongations are kept)."""
        for finer in range(level):
            self.laplacians[finer] = self.masses[finer] = self._restrictions[finer] = None
            self._restrictions32[finer] = self._prolongations32[finer] = None
            self._operators.pop(finer, None)

    @property
    def num_levels(self) -> int:
        return len(self.laplacians)

    def set_shift(self, shift: float) -> None:
        """Precondition L + shift * M (shift > 0 makes the coarsest solve regular)."""
        self.shift = shift
        self._operators = {}
        coarsest = self.num_levels - 1
        self._coarsest = sparse_linalg.splu((self.laplacians[coarsest] + shift * self.masses[coarsest]).tocsc())

    def _operator(self, level: int) -> tuple[sparse.csr_matrix, np.ndarray]:
        """(L + shift M) of `level` and its damped-Jacobi scale, both float32."""
        if level not in self._operators:
            operator = (self.laplacians[level] + self.shift * self.masses[level]).tocsr()
            self._operators[level] = (operator.astype(np.float32), damping_scale(operator).astype(np.float32))
        return self._operators[level]

    def vcycle(self, level: int, rhs: np.ndarray, sweeps: int = 1, out_dtype: type = np.float64) -> np.ndarray:
        """One V-cycle from `level` for (L + shift M) x = rhs with damped-Jacobi smoothing, x0 = 0.

        Computed in float32; returned as `out_dtype`.
        """
        return self._vcycle32(level, np.asarray(rhs, dtype=np.float32), sweeps).astype(out_dtype, copy=False)

    def _vcycle32(self, level: int, rhs: np.ndarray, sweeps: int) -> np.ndarray:
        if level == self.num_levels - 1:
            return self._coarsest.solve(rhs.astype(np.float64)).astype(np.float32)
        operator, scale = self._operator(level)
        x = rhs * scale
        for _ in range(sweeps - 1):
            x += (rhs - operator @ x) * scale
        coarse = self._vcycle32(level + 1, self._restrictions32[level] @ (rhs - operator @ x), sweeps)
        x += self._prolongations32[level] @ coarse
        for _ in range(sweeps):
            x += (rhs - operator @ x) * scale
        return x


def damping_scale(operator: sparse.csr_matrix, damping: float = 0.7) -> np.ndarray:
    """Damped-Jacobi scale damping / diag(A) as a column (n, 1)."""
    return (damping / operator.diagonal())[:, None]
