"""The CLI's shared pieces and its larger commands (the entry point is the top-level `cli`)."""
