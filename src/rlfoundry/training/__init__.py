"""The pieces every trainer shares: optimizer, schedule, sampler, checkpoints, metrics."""
