"""Algorithms: loss functions and the trainers that drive them."""
