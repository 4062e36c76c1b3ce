"""Top-N recommendation: lists over a catalogue, their metrics, the NumPy baselines, the second stage's pieces."""

from recsys.topn.baselines import EASE, EASE_MAX_ITEMS, Popularity, cooccurrence, ease_weights
from recsys.topn.lists import by_score, rerank_pool, top_k_lists
from recsys.topn.metrics import RELEVANT, Interactions, evaluate, metrics, recall_at
from recsys.topn.rerank import candidate_pool, fingerprint, head_scores, log_share, pair_features

__all__ = [
    "EASE", "EASE_MAX_ITEMS", "RELEVANT", "Interactions", "Popularity", "by_score", "candidate_pool", "cooccurrence",
    "ease_weights", "evaluate", "fingerprint", "head_scores", "log_share", "metrics", "pair_features", "recall_at",
    "rerank_pool", "top_k_lists",
]  # fmt: skip
