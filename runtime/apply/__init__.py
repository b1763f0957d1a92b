"""Plan -> work: the executor loop, the steps run on the driver, gates and approvals, the verbs."""
