"""Training: replay buffer, online and offline loops, checkpoints."""
