"""PatchCore memory bank: approximate greedy coreset + faiss nearest-neighbour search.

Distances are plain L2. faiss finds the neighbours; their distances are then recomputed directly,
because faiss's own (squared, through a matrix product) change in the last digits with the number of
threads, and a cohort split across processes must map a volume exactly as one process does.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch
from tqdm import tqdm

#: banks up to this size use an exact flat index, larger ones HNSW (M = 32, efSearch 64)
FLAT_INDEX_MAX = 20_000


def greedy_coreset(features: np.ndarray, size: int, projection_dim: int = 128, seed: int = 0,
                   progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """k-center greedy on a random projection (approximate greedy coreset, PatchCore).

    Returns ``(indices, radii)``: the selected rows of ``features`` (N, D) in order, and the
    covering radius (max distance of any point to its nearest centre, in the projected
    space) after each selection, which never increases.
    """
    n = len(features)
    size = int(min(size, n))
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32))
    if projection_dim and x.shape[1] > projection_dim:
        g = torch.Generator().manual_seed(int(seed))
        x = x @ (torch.randn(x.shape[1], projection_dim, generator=g) / projection_dim**0.5)
    sq_norms = (x * x).sum(1)
    selected = np.empty(size, np.int64)
    radii = np.empty(size, np.float64)

    def sq_dist_to(i: int) -> torch.Tensor:  # ||x - x_i||^2 through one matrix-vector product
        return (sq_norms - 2.0 * (x @ x[i]) + sq_norms[i]).clamp_min_(0.0)

    selected[0] = rng.integers(n)
    min_sq = sq_dist_to(int(selected[0]))
    radii[0] = float(min_sq.max()) ** 0.5
    for i in tqdm(range(1, size), desc="coreset", disable=not progress, mininterval=1.0):
        selected[i] = int(torch.argmax(min_sq))
        torch.minimum(min_sq, sq_dist_to(int(selected[i])), out=min_sq)
        min_sq[selected[i]] = 0.0
        radii[i] = float(min_sq.max()) ** 0.5
    return selected, radii


class MemoryBank:
    """Nearest-neighbour search over a bank of patch features (N, D) float32."""

    def __init__(self, features: np.ndarray, index_type: str = "auto"):
        self.features = np.ascontiguousarray(features, dtype=np.float32)
        n, d = self.features.shape
        if index_type == "auto":
            index_type = "flat" if n <= FLAT_INDEX_MAX else "hnsw"
        if index_type == "flat":
            self.index = faiss.IndexFlatL2(d)
        elif index_type == "hnsw":
            self.index = faiss.IndexHNSWFlat(d, 32)
            self.index.hnsw.efSearch = 64
        else:
            raise ValueError(f"index_type must be auto, flat or hnsw, got {index_type!r}")
        self.index_type = index_type
        self.index.add(self.features)

    def __len__(self) -> int:
        return len(self.features)

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """L2 distances and indices of the ``k`` nearest bank entries, each (Q, k); the distances do not
        depend on the number of threads."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        _, indices = self.index.search(queries, k)
        distances = np.empty(indices.shape, np.float32)
        for start in range(0, len(queries), 4096):  # bounded memory: (4096, k, D) differences at a time
            chunk = slice(start, start + 4096)
            diff = self.features[np.maximum(indices[chunk], 0)] - queries[chunk, None, :]
            distances[chunk] = np.sqrt(np.square(diff).sum(-1))
        return distances, indices
