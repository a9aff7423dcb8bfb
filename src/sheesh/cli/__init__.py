"""Command line (typer)."""
