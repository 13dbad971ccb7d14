"""Tensor operations shared by losses and trainers (log-probs, masking, reductions)."""
