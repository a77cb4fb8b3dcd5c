"""Simulator stage: response, leave and return models; the batched cross-session environment."""
