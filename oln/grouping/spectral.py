"""Spectral globalisation of a boundary map (gPb-style, GGN's `use_globalization`).

Pixels form a 4-connected graph with weights exp(-boundary / gamma) (the minimum
of the two endpoint values); the smallest generalised eigenvectors of
(D - W) v = lambda D v are turned into a boundary map by the gradient magnitude
of each eigenvector, normalised to [0, 1] and weighted by 1 / sqrt(lambda).

Solvers (`SPECTRAL_SOLVERS`):
- multilevel: the pixel graph itself, by multilevel LOBPCG (`oln.grouping.eigensolver`);
  no factorisation, about 1-2 s at 800x1216 on one core.
- pooled: the graph of the boundary max-pooled by an integer factor to at most
  `max_pixels` nodes (thin boundaries survive), solved by shift-invert Lanczos; the
  eigenvectors are upsampled bilinearly before taking gradients. Approximate.
- shift_invert: the pixel graph by shift-invert Lanczos (an LU factorisation of the
  whole Laplacian: minutes and GBs above ~10^5 pixels); the reference.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import sparse
from scipy.sparse import linalg as sparse_linalg

from oln.grouping.eigensolver import EigenSolverOptions, smallest_eigenpairs
from oln.grouping.multigrid import grid_laplacian

SPECTRAL_SOLVERS = ("multilevel", "pooled", "shift_invert")


def _max_pool(image: np.ndarray, factor: int) -> np.ndarray:
    height, width = image.shape
    pad_h, pad_w = (-height) % factor, (-width) % factor
    padded = np.pad(image, ((0, pad_h), (0, pad_w)), mode="edge")
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)
    return blocks.max(axis=(1, 3))


def pooling_factor(shape: tuple[int, int], max_pixels: int | None) -> int:
    """Smallest integer factor whose max-pooled grid has at most `max_pixels` nodes (1 = none)."""
    height, width = shape
    if max_pixels is None or height * width <= max_pixels:
        return 1
    factor = math.ceil(math.sqrt(height * width / max_pixels))
    while math.ceil(height / factor) * math.ceil(width / factor) > max_pixels:
        factor += 1
    return factor


def shift_invert_eigenpairs(node_weights: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Smallest `count` pairs of the pixel graph by shift-invert Lanczos (LU of the Laplacian)."""
    laplacian, mass = grid_laplacian(node_weights)
    values, vectors = sparse_linalg.eigsh(
        laplacian.tocsc(), k=count, M=sparse.diags(mass).tocsc(), sigma=-1e-5, which="LM"
    )
    order = np.argsort(values)
    return values[order], vectors[:, order]


def eigenvectors_to_boundary(
    vectors: np.ndarray, values: np.ndarray, grid_shape: tuple[int, int], out_shape: tuple[int, int]
) -> np.ndarray:
    """Eigenvectors (n, k) on a `grid_shape` grid -> boundary map of `out_shape` (unnormalised)."""
    grid_h, grid_w = grid_shape
    total = np.zeros(out_shape, dtype=np.float64)
    grad = np.empty(out_shape, dtype=np.float32)
    for vec, val in zip(vectors.T, values):
        span = vec.max() - vec.min()
        vec = (vec - vec.min()) / (span if span > 0 else 1.0) / math.sqrt(max(val, 1e-12))
        vec = vec.reshape(grid_h, grid_w).astype(np.float32)
        if (grid_h, grid_w) != out_shape:
            vec = cv2.resize(vec, (out_shape[1], out_shape[0]), interpolation=cv2.INTER_LINEAR)
        grad.fill(0.0)
        dx = np.abs(vec[:, 1:] - vec[:, :-1])
        dy = np.abs(vec[1:] - vec[:-1])
        np.maximum(grad[:, 1:], dx, out=grad[:, 1:])
        np.maximum(grad[:, :-1], dx, out=grad[:, :-1])
        np.maximum(grad[1:], dy, out=grad[1:])
        np.maximum(grad[:-1], dy, out=grad[:-1])
        total += grad
    return np.power(total, 1.0 / math.sqrt(2.0))


def globalized_boundary(
    boundary: np.ndarray,
    num_vectors: int = 16,
    gamma: float = 0.12,
    solver: str = "multilevel",
    max_pixels: int | None = 60_000,
    solver_options: EigenSolverOptions | None = None,
) -> np.ndarray:
    """Spectral (globalised) boundary map, normalised to max 1.

    Args:
        boundary: float (H, W) local boundary strength in [0, 1].
        num_vectors: eigenvectors computed (the first, constant one is dropped).
        gamma: affinity scale, w = exp(-boundary / gamma).
        solver: one of SPECTRAL_SOLVERS.
        max_pixels: graph size limit of the "pooled" solver (None = no pooling, i.e. shift_invert).
        solver_options: tolerances of the "multilevel" solver.
    Returns:
        float32 (H, W) in [0, 1].
    """
    if solver not in SPECTRAL_SOLVERS:
        raise ValueError(f"unknown spectral solver {solver!r}; expected one of {SPECTRAL_SOLVERS}")
    height, width = boundary.shape
    factor = pooling_factor((height, width), max_pixels) if solver == "pooled" else 1
    grid = _max_pool(boundary, factor) if factor > 1 else boundary
    k = min(num_vectors, grid.size - 1)
    if k < 2:
        return np.zeros_like(boundary, dtype=np.float32)
    weights = np.exp(-grid.astype(np.float64) / gamma)
    if solver == "multilevel" and grid.size > k + 1:
        values, vectors = smallest_eigenpairs(weights, k, solver_options)
    else:
        values, vectors = shift_invert_eigenpairs(weights, k)
    result = eigenvectors_to_boundary(vectors[:, 1:], values[1:], grid.shape, (height, width))
    peak = result.max()
    return (result / peak if peak > 0 else result).astype(np.float32)
