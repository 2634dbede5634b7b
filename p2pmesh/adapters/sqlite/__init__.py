"""p2pmesh/adapters/sqlite."""
