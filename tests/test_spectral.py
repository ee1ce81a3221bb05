"""Tests for the spectral step: multigrid hierarchy, multilevel eigensolver, solvers against shift-invert."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import linalg, sparse

from oln.grouping import GroupingOptions, affinity_to_proposals
from oln.grouping.eigensolver import EigenSolverOptions, smallest_eigenpairs
from oln.grouping.multigrid import GridHierarchy, conductances, grid_laplacian, interpolation
from oln.grouping.spectral import globalized_boundary, shift_invert_eigenpairs


def blob_affinity(height: int, width: int, seed: int) -> np.ndarray:
    """Blurred map: a textured background and a few ellipses/squares with low-affinity outlines."""
    rng = np.random.default_rng(seed)
    affinity = 0.4 + 0.1 * cv2.GaussianBlur(rng.random((height, width)).astype(np.float32), (0, 0), 4)
    owner = np.zeros((height, width), np.int32)
    for index in range(1, 6):
        canvas = np.zeros((height, width), np.uint8)
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(6, width // 4)), int(rng.integers(6, height // 4)))
        cv2.ellipse(canvas, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        owner[canvas > 0] = index
        affinity[canvas > 0] = rng.uniform(0.7, 0.95)
    edges = np.zeros((height, width), bool)
    edges[:, 1:] |= owner[:, 1:] != owner[:, :-1]
    edges[1:] |= owner[1:] != owner[:-1]
    affinity[edges] = 0.05
    return np.clip(cv2.GaussianBlur(affinity, (0, 0), 1.0), 0, 1)


def node_weights(affinity: np.ndarray) -> np.ndarray:
    return np.exp(-(1.0 - affinity.astype(np.float64)) / 0.12)


def test_grid_laplacian_is_the_min_weight_pixel_graph():
    a = np.random.default_rng(0).random((5, 7))
    laplacian, mass = grid_laplacian(a)
    dense = np.zeros((35, 35))
    for y in range(5):
        for x in range(7):
            for dy, dx in ((0, 1), (1, 0)):
                if y + dy < 5 and x + dx < 7:
                    p, q = y * 7 + x, (y + dy) * 7 + x + dx
                    dense[p, q] = dense[q, p] = min(a[y, x], a[y + dy, x + dx])
    degree = dense.sum(1)
    np.testing.assert_allclose(laplacian.toarray(), np.diag(degree) - dense, atol=1e-15)
    np.testing.assert_allclose(mass, 1.0 + degree)


@pytest.mark.parametrize("shape", [(9, 13), (10, 12), (33, 50), (3, 4)])
def test_interpolation_rows_and_galerkin_stencils(shape):
    laplacian, mass = grid_laplacian(np.random.default_rng(1).random(shape) ** 3)
    hierarchy = GridHierarchy(laplacian, mass, shape, min_nodes=4)
    for level, prolongation in enumerate(hierarchy.prolongations):
        fine, coarse = hierarchy.shapes[level], hierarchy.shapes[level + 1]
        assert coarse == ((fine[0] + 1) // 2, (fine[1] + 1) // 2)
        np.testing.assert_allclose(np.asarray(prolongation.sum(1)).ravel(), 1.0, atol=1e-12)
        assert prolongation.data.min() > 0
        even = np.arange(fine[0] * fine[1]).reshape(fine)[::2, ::2].ravel()
        assert (prolongation[even] != sparse.eye(coarse[0] * coarse[1])).nnz == 0
    for level, operator in enumerate(hierarchy.laplacians):
        # Galerkin operators stay within the 3x3 stencil (what `conductances` reads) with zero row sums
        height, width = hierarchy.shapes[level]
        rows, cols = operator.nonzero()
        assert np.abs(rows // width - cols // width).max() <= 1 and np.abs(rows % width - cols % width).max() <= 1
        np.testing.assert_allclose(operator @ np.ones(height * width), 0.0, atol=1e-12)
        couplings = conductances(operator, (height, width))
        negative = -np.minimum(operator.toarray() - np.diag(operator.diagonal()), 0).sum()
        assert sum(values.sum() for values in couplings.values()) == pytest.approx(negative, rel=1e-12)


def test_interpolation_does_not_leak_across_a_weak_line():
    a = np.ones((16, 16))
    a[:, 7:9] = 1e-4  # a two-pixel-wide weak line between columns 0-6 and 9-15
    laplacian, _ = grid_laplacian(a)
    prolongation, coarse = interpolation(laplacian, (16, 16))
    left = np.zeros(coarse)
    left[:, :4] = 1.0  # coarse columns 0-3 = fine columns 0, 2, 4, 6
    fine = (prolongation @ left.ravel()).reshape(16, 16)
    np.testing.assert_allclose(fine[:, :7], 1.0, atol=1e-3)
    np.testing.assert_allclose(fine[:, 9:], 0.0, atol=1e-3)


def _subspace_residual(exact: np.ndarray, found: np.ndarray, mass: np.ndarray) -> float:
    """Largest sine of the angle between a column of `exact` and the span of `found` (M-inner product)."""
    root = np.sqrt(mass)[:, None]
    basis = linalg.orth(found * root)
    target = exact * root
    target /= np.linalg.norm(target, axis=0)
    return float(np.linalg.norm(target - basis @ (basis.T @ target), axis=0).max())


@pytest.mark.parametrize(
    "options, value_tol, angle_tol",
    [
        (EigenSolverOptions(coarse_nodes=300, pixel_level_nodes=0), 0.05, 0.05),  # Galerkin half resolution
        (EigenSolverOptions(coarse_nodes=300, finest_level=0, finest_iterations=30, tol=1e-4), 1e-6, 1e-4),
    ],
    ids=["half-resolution", "pixel-level"],
)
def test_multilevel_eigenpairs_match_shift_invert(options, value_tol, angle_tol):
    weights = node_weights(blob_affinity(72, 96, seed=0))
    exact_values, exact_vectors = shift_invert_eigenpairs(weights, 16)
    values, vectors = smallest_eigenpairs(weights, 16, options)
    assert values.shape == (16,) and vectors.shape == (72 * 96, 16)
    _, mass = grid_laplacian(weights)
    np.testing.assert_allclose(vectors.T @ (mass[:, None] * vectors.astype(float)), np.eye(16), atol=1e-5)
    assert abs(values[0]) < 1e-10
    np.testing.assert_allclose(values[1:12], exact_values[1:12], rtol=value_tol)
    # the 12 smallest exact eigenvectors lie in the computed 16-dimensional subspace
    assert _subspace_residual(exact_vectors[:, :12], vectors, mass) < angle_tol


@pytest.mark.parametrize("seed", [0, 1])
def test_multilevel_proposals_match_shift_invert(seed):
    affinity = blob_affinity(120, 160, seed)
    params = dict(orientation=True, globalization=0.5, max_proposals=20)
    exact, _ = affinity_to_proposals(affinity, spectral_solver="shift_invert", **params)
    for solver_params in (dict(spectral_solver="multilevel"), dict(spectral_solver="multilevel", spectral_tol=1.0)):
        masks, _ = affinity_to_proposals(affinity, **solver_params, **params)
        inter = exact.reshape(len(exact), -1).astype(float) @ masks.reshape(len(masks), -1).T.astype(float)
        union = exact.reshape(len(exact), -1).sum(1)[:, None] + masks.reshape(len(masks), -1).sum(1)[None] - inter
        assert ((inter / union).max(1) >= 0.95).mean() >= 0.9


def test_solver_options_and_defaults():
    assert GroupingOptions().spectral_solver == "multilevel"
    with pytest.raises(ValueError, match="spectral_solver"):
        affinity_to_proposals(blob_affinity(40, 40, 0), spectral_solver="eig_typo")
    boundary = 1.0 - blob_affinity(60, 80, 2)
    pooled = globalized_boundary(boundary, solver="pooled", max_pixels=1200)  # 2x max-pooled graph
    exact = globalized_boundary(boundary, solver="shift_invert")
    multilevel = globalized_boundary(boundary)
    assert pooled.shape == exact.shape == multilevel.shape == boundary.shape
    assert pooled.max() == pytest.approx(1.0) and multilevel.max() == pytest.approx(1.0)
    assert np.corrcoef(exact.ravel(), multilevel.ravel())[0, 1] > 0.99
    assert np.corrcoef(exact.ravel(), pooled.ravel())[0, 1] > 0.7
