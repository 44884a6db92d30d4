//! Exact and compressed nearest-neighbour search.
