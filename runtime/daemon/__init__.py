"""The warm driver: successive ``mlops apply`` commands on the embedded default share one Ray job.

Like a build daemon, the first apply that has work to do starts the project's local Ray cluster
(:mod:`runtime.compute.cluster`) and a long-lived driver process beside it (:mod:`.server`); that apply and
every later one are forwarded to the driver over a private Unix socket (:mod:`.client`), which runs the
command in its own process, already joined to Ray, with the workers (and the modules they imported) of the
applies before. The command's output and exit code come back as if it had run in the caller.

The driver stops itself after an idle time (``MLOPS_IDLE_STOP``, default 15m; ``off`` turns the warm driver
off), and stops the local cluster with it unless a deployment serves there; ``mlops down`` stops both. A
driver whose process died, or that runs other mlops code or another environment than the caller's, is
replaced by the next apply. A no-op apply, and every plan, starts nothing.
"""
