"""Jobs: the store, the scheduler that runs them (today one worker) and change events."""
