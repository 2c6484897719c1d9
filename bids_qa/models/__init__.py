"""Deep model families. One module per family; each exposes a network, a scorer and defaults."""
