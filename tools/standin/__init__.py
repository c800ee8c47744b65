"""Local stand-in for the subset of Polar's API that polar-credits uses, with Polar's semantics."""
