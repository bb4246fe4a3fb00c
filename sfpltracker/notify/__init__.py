"""Publishers of accepted events to other systems (NATS); independent of the store."""
