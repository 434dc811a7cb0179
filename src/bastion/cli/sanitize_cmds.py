"""CLI commands (to be filled in)."""
