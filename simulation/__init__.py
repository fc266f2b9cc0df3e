"""A federation in one process: the real coordinator with virtual clients instead of gRPC ones (docs/simulation.md)."""
