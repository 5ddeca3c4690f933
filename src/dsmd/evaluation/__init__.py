"""Evaluation: cross-modal retrieval recall (R@K, RSUM) and inference latency."""

from dsmd.evaluation.latency import measure_latency
from dsmd.evaluation.retrieval import RetrievalRanks, retrieval_metrics, retrieval_ranks

__all__ = ["RetrievalRanks", "measure_latency", "retrieval_metrics", "retrieval_ranks"]
