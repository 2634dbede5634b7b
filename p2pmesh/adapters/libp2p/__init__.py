"""p2pmesh/adapters/libp2p."""
