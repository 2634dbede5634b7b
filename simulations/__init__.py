"""Discrete-event simulations that drive the real protocol core at scale."""
