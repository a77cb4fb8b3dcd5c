"""Evaluation stage: metrics, protocol, statistics, off-policy evaluation (ope, propensity)."""
