"""p2pmesh/adapters/docker."""
