"""p2pmesh/adapters."""
