"""Smallest generalised eigenpairs L v = lambda M v of a pixel-grid Laplacian without factorising it.

Multilevel LOBPCG: the eigenproblem is solved exactly (shift-invert Lanczos) on
the coarsest level of a `GridHierarchy`, and the Ritz vectors are carried up one
level at a time: interpolated, improved by LOBPCG iterations preconditioned by a
V-cycle of the levels below until every wanted pair's relative residual is below
`tol` (or `max_iterations`), and finally Rayleigh-Ritz projected on the pixel grid.
A few guard vectors beyond the wanted ones keep the last wanted pairs converging.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg, sparse
from scipy.sparse import linalg as sparse_linalg

from oln.grouping.multigrid import GridHierarchy, grid_laplacian


@dataclass
class EigenSolverOptions:
    """Options of `smallest_eigenpairs`.

    Attributes:
        tol: stop iterating on a level once every wanted pair has relative residual
            ||L v - lambda M v||_(M^-1) / lambda below this (the constant vector excluded).
        max_iterations: LOBPCG iterations per level at most, below the finest level.
        finest_iterations: LOBPCG iterations at most on the finest level (each costs about as
            much as all coarser levels' iterations together).
        guard_vectors: extra vectors iterated along with the wanted ones.
        coarse_nodes: the coarsest level has at most this many nodes (solved exactly).
        finest_level: the last level iterated on: 0 = the pixel grid; 1 = the half-resolution
            Galerkin level, whose Ritz vectors are those of the pixel grid over the interpolated
            subspace (their prolongation is returned).
        pixel_level_nodes: grids of at most this many pixels are iterated on down to the pixel
            grid itself whatever `finest_level` says.
        float32_nodes: levels with more nodes than this keep their LOBPCG blocks in float32 (half
            the time of the dense products; the Rayleigh-Ritz matrices and the returned vectors
            stay float64).
    """

    tol: float = 0.1
    max_iterations: int = 4
    finest_iterations: int = 4
    guard_vectors: int = 4
    coarse_nodes: int = 4000
    finest_level: int = 1
    pixel_level_nodes: int = 100_000
    float32_nodes: int = 100_000


def _shift_invert(
    laplacian: sparse.csr_matrix, mass: sparse.csr_matrix, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact smallest pairs by shift-invert Lanczos (the shift is tiny against the largest eigenvalue)."""
    sigma = -1e-8 * float(np.max(laplacian.diagonal() / mass.diagonal()))
    values, vectors = sparse_linalg.eigsh(laplacian.tocsc(), k=count, M=mass.tocsc(), sigma=sigma, which="LM")
    order = np.argsort(values)
    return values[order], vectors[:, order]


Block = tuple[np.ndarray, np.ndarray]  # vectors Y and S @ Y


def _rayleigh_ritz(blocks: list[Block], count: int, first_values: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Smallest `count` Ritz pairs of the symmetric S on the span of the blocks' vectors.

    `first_values`: the first block is orthonormal Ritz vectors with these Ritz values, so its own
    products (identity Gram, diagonal stiffness) are not recomputed.

    Returns:
        Ritz values (count,); coefficients (sum of block widths, count) of orthonormal combinations.
    """
    sizes = np.cumsum([0] + [b[0].shape[1] for b in blocks])
    stiffness = np.empty((sizes[-1], sizes[-1]))
    gram = np.empty_like(stiffness)
    for i, (y, _) in enumerate(blocks):
        for j in range(i, len(blocks)):
            rows, cols = slice(sizes[i], sizes[i + 1]), slice(sizes[j], sizes[j + 1])
            if i == j == 0 and first_values is not None:
                stiffness[rows, cols] = np.diag(first_values)
                gram[rows, cols] = np.eye(len(first_values))
                continue
            stiffness[rows, cols] = y.T @ blocks[j][1]
            gram[rows, cols] = y.T @ blocks[j][0]
            stiffness[cols, rows] = stiffness[rows, cols].T
            gram[cols, rows] = gram[rows, cols].T
    scale, basis = linalg.eigh(gram)
    tiny = max(1e-10, 100 * float(np.finfo(blocks[0][0].dtype).eps))
    keep = scale > tiny * scale.max()  # drop directions that are (nearly) linearly dependent
    whiten = basis[:, keep] / np.sqrt(scale[keep])
    values, coefficients = linalg.eigh(whiten.T @ ((stiffness + stiffness.T) / 2) @ whiten)
    return values[:count], whiten @ coefficients[:, :count]


def _combine(blocks: list[Block], coefficients: np.ndarray) -> Block:
    """The block sum_i blocks[i] @ coefficients[rows of block i], for Y and S Y alike."""
    out: list[np.ndarray] = []
    for part in range(2):
        total, start = None, 0
        for block in blocks:
            width = block[0].shape[1]
            term = block[part] @ coefficients[start : start + width].astype(block[part].dtype)
            total = term if total is None else np.add(total, term, out=total)
            start += width
        out.append(total)
    return out[0], out[1]


def _unit_block(vectors: np.ndarray, operator: sparse.csr_matrix) -> Block:
    """(Y, S Y) with the columns of Y scaled to unit norm (in place)."""
    norms = np.sqrt(np.einsum("ij,ij->j", vectors, vectors))
    vectors *= 1.0 / np.where(norms > 0, norms, 1.0)
    return vectors, operator @ vectors


def _symmetric_scaling(matrix: sparse.csr_matrix, scale: np.ndarray) -> sparse.csr_matrix:
    """diag(scale) @ matrix @ diag(scale), scaling the stored values in place of two sparse products."""
    out = matrix.tocsr(copy=True)
    rows = np.repeat(np.arange(out.shape[0]), np.diff(out.indptr))
    out.data *= scale[rows] * scale[out.indices]
    return out


def lobpcg_level(
    hierarchy: GridHierarchy, level: int, vectors: np.ndarray, wanted: int, tol: float, max_iterations: int,
    dtype: type = np.float64,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Rayleigh-Ritz on `vectors`, then LOBPCG iterations on `level` until converged.

    Works on the level's lumped-mass problem in standard form, S = D^-1/2 L D^-1/2 and
    Y = D^1/2 X. Stops when every wanted pair but the constant one has ||S y - theta y|| <
    tol * theta, or after `max_iterations`.

    `dtype`: of the iterated blocks (float32 halves the dense products' time).

    Returns:
        Ritz values, Ritz vectors X (D-orthonormal, as many as given; float64), iterations run.
    """
    root = np.sqrt(hierarchy.lumped_masses[level])[:, None]
    scaled = _symmetric_scaling(hierarchy.laplacians[level], 1.0 / root[:, 0]).astype(dtype)
    count = vectors.shape[1]
    current = _unit_block((vectors * root).astype(dtype), scaled)
    values, coefficients = _rayleigh_ritz([current], count)
    current = _combine([current], coefficients)
    previous: Block | None = None
    for iteration in range(max_iterations + 1):
        residual = current[1] - current[0] * values.astype(dtype)
        relative = np.sqrt(np.einsum("ij,ij->j", residual, residual))
        relative /= np.maximum(np.abs(values), np.finfo(float).tiny)
        if iteration == max_iterations or relative[1:wanted].max() < tol:
            return values, current[0] / root, iteration
        residual *= root  # back to L x - theta D x, preconditioned, then scaled again
        search = hierarchy.vcycle(level, residual, out_dtype=dtype)
        del residual
        search *= root
        blocks = [current, _unit_block(search, scaled)]
        if previous is not None:
            blocks.append(previous)
        values, coefficients = _rayleigh_ritz(blocks, count, first_values=values)
        # new iterate = current @ C_current + step, step = the other blocks' part (the next "previous")
        step = _combine(blocks[1:], coefficients[count:])
        blocks = search = previous = None  # free the old blocks before the new iterate is formed
        current = _combine([current], coefficients[:count])
        for part, extra in zip(current, step):
            part += extra
        norms = np.sqrt(np.einsum("ij,ij->j", step[0], step[0]))
        scale = 1.0 / np.where(norms > 0, norms, 1.0)
        for part in step:
            np.multiply(part, scale, out=part)
        previous = step
    return values, current[0] / root, max_iterations


def _consistent_ritz(
    hierarchy: GridHierarchy, level: int, vectors: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rayleigh-Ritz with the level's consistent (Galerkin) mass: the pixel-grid Ritz pairs."""
    stiffness = vectors.T @ (hierarchy.laplacians[level] @ vectors)
    gram = vectors.T @ (hierarchy.masses[level] @ vectors)
    values, coefficients = linalg.eigh((stiffness + stiffness.T) / 2, (gram + gram.T) / 2)
    return values[:count], vectors @ coefficients[:, :count]


def smallest_eigenpairs(
    node_weights: np.ndarray, count: int, options: EigenSolverOptions | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Smallest `count` pairs of L v = lambda M v for the pixel graph of `node_weights`.

    Args:
        node_weights: float (H, W) pixel affinities a; edges weigh min(a_p, a_q), M = 1 + degree.
        count: eigenpairs wanted (the first is the constant vector, lambda = 0).
        options: EigenSolverOptions.
    Returns:
        values (count,) ascending; vectors (H*W, count), M-orthonormal (float32 when the finest
        level iterated on is not the pixel grid).
    """
    options = options or EigenSolverOptions()
    if node_weights.size <= count + 1:
        raise ValueError(f"{count} eigenpairs need more than {node_weights.size} pixels")
    laplacian, mass = grid_laplacian(node_weights)
    total = min(count + options.guard_vectors, node_weights.size - 2)
    hierarchy = GridHierarchy(laplacian, mass, node_weights.shape, max(options.coarse_nodes, 4 * total))
    del laplacian, mass
    coarsest = hierarchy.num_levels - 1
    values, vectors = _shift_invert(hierarchy.laplacians[coarsest], hierarchy.masses[coarsest], total)
    positive = values[1:][values[1:] > 0]
    hierarchy.set_shift(0.1 * float(positive.min()) if positive.size else 1e-12)
    finest = 0 if node_weights.size <= options.pixel_level_nodes else min(options.finest_level, coarsest)
    hierarchy.release_below(finest)
    for level in range(coarsest - 1, finest - 1, -1):
        vectors = hierarchy.prolongations[level] @ vectors
        iterations = options.finest_iterations if level == finest else options.max_iterations
        dtype = np.float32 if hierarchy.lumped_masses[level].size > options.float32_nodes else np.float64
        values, vectors, _ = lobpcg_level(hierarchy, level, vectors, count, options.tol, iterations, dtype)
    values, vectors = _consistent_ritz(hierarchy, finest, vectors, count)
    return values, _prolongate(hierarchy, finest, vectors)


def _prolongate(hierarchy: GridHierarchy, level: int, vectors: np.ndarray) -> np.ndarray:
    """Level-`level` vectors interpolated to the pixel grid, one column at a time (float32 when level > 0)."""
    if level == 0:
        return vectors
    out = np.empty((hierarchy.lumped_masses[0].size, vectors.shape[1]), dtype=np.float32)
    for j in range(vectors.shape[1]):
        column = vectors[:, j]
        for prolongation in reversed(hierarchy.prolongations[:level]):
            column = prolongation @ column
        out[:, j] = column
    return out
