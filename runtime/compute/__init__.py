"""The only importer of Ray: joining the cluster, tasks, workers, Ray Train, Serve, batch."""
