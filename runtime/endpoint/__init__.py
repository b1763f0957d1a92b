"""The HTTP contract of a realtime deployment: its signature, its checks, its errors."""
