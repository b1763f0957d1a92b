"""The artifact store's lifecycle: what the state still names (``references``), freeing the rest (``gc``, the
verb behind ``mlops gc``) and how big the store is, by kind (``sizes``); the data a state holds and no longer
holds (``holdings``), retention enforced (``retention``) and erasure through lineage (``erasure``, the verb behind
``mlops erase``).

:func:`runtime.lifecycle.gc.collect` is the one entry point of a collection; it takes the state lock itself.
"""
