"""Evaluation stage: metrics, protocol, statistics."""
