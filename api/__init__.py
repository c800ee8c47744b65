"""HTTP API: Polar's webhook endpoint and health probes (FastAPI)."""
