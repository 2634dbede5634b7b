"""The protocol core: pure, synchronous state machines. No I/O, clocks or randomness here."""
