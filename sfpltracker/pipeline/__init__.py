"""From accepted records to the store: intake (the ack point), batcher, circuit breaker."""
