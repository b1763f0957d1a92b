"""Content-addressed objects: the store, its local and object-store backends, hashing, durability."""
