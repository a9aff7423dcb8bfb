"""Control plane services: VM lifecycle, scheduling onto nodes, images."""
