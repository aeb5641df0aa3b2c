"""LVT's samplers: cached (key/value cache, incremental masked conv) and naive (reference)."""
