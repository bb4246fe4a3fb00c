"""HTTP resources: one module per route family, the root router, the listeners' sites."""
