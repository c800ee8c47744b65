"""Benchmarks of polar-credits against its real local stack (`make bench`)."""
