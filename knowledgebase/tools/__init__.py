"""Tools over the library: the demo and the read-only insights used by the notebooks."""
