"""The linflow command line (Typer)."""
