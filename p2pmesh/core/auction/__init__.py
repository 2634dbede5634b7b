"""p2pmesh/core/auction."""
