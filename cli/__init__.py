"""The p2pmesh command line: talks only to the local daemon's control socket."""
