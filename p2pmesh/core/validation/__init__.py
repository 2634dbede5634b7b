"""p2pmesh/core/validation."""
