"""Studies: design expansion, planned order, the results table and the frontier."""
