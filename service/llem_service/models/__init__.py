"""Which models this server can run: local directories under the roots, the hub and its cache,
and what can be known about a model (its context length) before it is loaded."""
