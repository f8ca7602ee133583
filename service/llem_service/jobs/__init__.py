"""Jobs: the store, the scheduler that runs them on granted GPUs, and change events."""
