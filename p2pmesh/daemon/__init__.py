"""p2pmesh/daemon."""
