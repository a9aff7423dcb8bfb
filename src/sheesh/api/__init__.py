"""HTTP API (FastAPI): app factory, routers per resource, error mapping."""
