"""The bootstrap side of the mesh: the shipped bootstrap list and the bootstrap-node profile."""
