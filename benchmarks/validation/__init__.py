"""The GPU validation campaign's parts: the rigs it runs on (a real GPU, or the scripted one)
and its checks. ``benchmarks/gpu_validation.py`` runs them."""
