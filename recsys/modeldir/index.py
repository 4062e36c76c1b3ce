"""The faiss index of a model dir's unit catalogue vectors (inner product; movies.faiss), as
`recsys.topn.nearest` searches it. Saved with the model from `SAVED_FROM` movies on, where building it takes
seconds; a smaller catalogue's is built when first asked for (a fraction of a second)."""

from __future__ import annotations

import logging

import numpy as np

FILE = "movies.faiss"
KIND = "HNSW32"  # faiss index_factory's name: an HNSW graph of 32 links per node over the raw vectors
EF_CONSTRUCTION = 100  # the graph's breadth while it is built
SAVED_FROM = 20_000  # from this catalogue size the index is saved and searched by default; below, exact is as fast


def faiss():
    """The faiss module, imported without its loader's INFO lines (which CPU build it picked)."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


def build(vectors: np.ndarray, ef_construction: int = EF_CONSTRUCTION):
    """A faiss index of the unit catalogue vectors [M, D] (inner product), their columns its labels."""
    index = faiss().index_factory(vectors.shape[1], KIND, faiss().METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(np.ascontiguousarray(vectors, np.float32))
    return index


def to_bytes(index) -> bytes:
    return faiss().serialize_index(index).tobytes()


def from_bytes(data: bytes):
    """The index saved by `to_bytes`; ValueError if these bytes are not one."""
    try:
        return faiss().deserialize_index(np.frombuffer(data, np.uint8))
    except RuntimeError as e:
        raise ValueError(str(e).strip().splitlines()[-1]) from None
