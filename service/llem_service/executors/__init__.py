"""Executors: how a job runs. ``local``: a child process on this host."""
