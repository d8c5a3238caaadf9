"""``clawtrace worker`` (scale mode): JetStream's events into the store, metrics for its shards."""
