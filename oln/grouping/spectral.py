"""Spectral globalisation of a boundary map (gPb-style, GGN's `use_globalization`).

Pixels form a 4-connected graph with weights exp(-boundary / gamma) (the minimum
of the two endpoint values); the smallest generalised eigenvectors of
(D - W) v = lambda D v are turned into a boundary map by the gradient magnitude
of each eigenvector, normalised to [0, 1] and weighted by 1 / sqrt(lambda).

Exact at full resolution this is slow (an LU factorisation of a 10^6-node
Laplacian); `max_pixels` bounds the graph size: larger maps are max-pooled by an
integer factor (thin boundaries survive), the eigenvectors are computed there and
upsampled bilinearly before taking gradients.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import sparse
from scipy.sparse import linalg as sparse_linalg


def _max_pool(image: np.ndarray, factor: int) -> np.ndarray:
    height, width = image.shape
    pad_h, pad_w = (-height) % factor, (-width) % factor
    padded = np.pad(image, ((0, pad_h), (0, pad_w)), mode="edge")
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)
    return blocks.max(axis=(1, 3))


def _laplacian_and_degree(weights: np.ndarray) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    height, width = weights.shape
    index = np.arange(height * width).reshape(height, width)
    right = np.minimum(weights[:, 1:], weights[:, :-1]).ravel()
    down = np.minimum(weights[1:], weights[:-1]).ravel()
    rows = np.concatenate([index[:, :-1].ravel(), index[:-1].ravel()])
    cols = np.concatenate([index[:, 1:].ravel(), index[1:].ravel()])
    values = np.concatenate([right, down]).astype(np.float64)
    n = height * width
    adjacency = sparse.coo_matrix((values, (rows, cols)), shape=(n, n)).tocsr()
    adjacency = adjacency + adjacency.T
    row_sum = np.asarray(adjacency.sum(axis=1)).ravel()
    laplacian = sparse.diags(row_sum) - adjacency
    degree = sparse.diags(1.0 + row_sum)  # GGN counts each pixel's self-affinity (1) in the degree
    return laplacian.tocsc(), degree.tocsc()


def eigenvectors_to_boundary(
    vectors: np.ndarray, values: np.ndarray, grid_shape: tuple[int, int], out_shape: tuple[int, int]
) -> np.ndarray:
    """Eigenvectors (n, k) on a `grid_shape` grid -> boundary map of `out_shape` (unnormalised)."""
    grid_h, grid_w = grid_shape
    total = np.zeros(out_shape, dtype=np.float64)
    for vec, val in zip(vectors.T, values):
        span = vec.max() - vec.min()
        vec = (vec - vec.min()) / (span if span > 0 else 1.0) / math.sqrt(max(val, 1e-12))
        vec = vec.reshape(grid_h, grid_w).astype(np.float32)
        if (grid_h, grid_w) != out_shape:
            vec = cv2.resize(vec, (out_shape[1], out_shape[0]), interpolation=cv2.INTER_LINEAR)
        grad = np.zeros(out_shape, dtype=np.float32)
        dx = np.abs(vec[:, 1:] - vec[:, :-1])
        dy = np.abs(vec[1:] - vec[:-1])
        np.maximum(grad[:, 1:], dx, out=grad[:, 1:])
        np.maximum(grad[:, :-1], dx, out=grad[:, :-1])
        np.maximum(grad[1:], dy, out=grad[1:])
        np.maximum(grad[:-1], dy, out=grad[:-1])
        total += grad
    return np.power(total, 1.0 / math.sqrt(2.0))


def globalized_boundary(
    boundary: np.ndarray, num_vectors: int = 16, gamma: float = 0.12, max_pixels: int | None = 60_000
) -> np.ndarray:
    """Spectral (globalised) boundary map, normalised to max 1.

    Args:
        boundary: float (H, W) local boundary strength in [0, 1].
        num_vectors: eigenvectors computed (the first, constant one is dropped).
        gamma: affinity scale, w = exp(-boundary / gamma).
        max_pixels: graph size limit; None = always full resolution (exact, slow).
    Returns:
        float32 (H, W) in [0, 1].
    """
    height, width = boundary.shape
    factor = 1
    if max_pixels is not None and height * width > max_pixels:
        factor = math.ceil(math.sqrt(height * width / max_pixels))
        while math.ceil(height / factor) * math.ceil(width / factor) > max_pixels:
            factor += 1
    grid = _max_pool(boundary, factor) if factor > 1 else boundary
    num_nodes = grid.size
    k = min(num_vectors, num_nodes - 1)
    if k < 2:
        return np.zeros_like(boundary, dtype=np.float32)
    laplacian, degree = _laplacian_and_degree(np.exp(-grid.astype(np.float64) / gamma))
    values, vectors = sparse_linalg.eigsh(laplacian, k=k, M=degree, sigma=-1e-5, which="LM")
    order = np.argsort(values)
    values, vectors = values[order][1:], vectors[:, order][:, 1:]
    result = eigenvectors_to_boundary(vectors, values, grid.shape, (height, width))
    peak = result.max()
    return (result / peak if peak > 0 else result).astype(np.float32)
