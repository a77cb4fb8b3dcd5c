"""Networks shared across stages: feature encoders, the history transformer, MLPs."""
