"""p2pmesh: a peer-to-peer compute mesh with no central server."""

__version__ = "0.1.0"
