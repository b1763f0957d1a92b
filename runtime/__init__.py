"""The mlops runtime: plan and apply the compiled graph on Ray, and the CLI over both halves."""
