"""The edge: everything between a client's connection and the gateway's routes."""
