"""The GitOps loop: the git source, the tick, its metrics."""
