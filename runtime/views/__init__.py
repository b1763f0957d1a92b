"""Read-only views of what was recorded: runs, models, lineage, audit, status."""
