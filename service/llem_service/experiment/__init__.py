"""One experiment inside its process: phases, statistics and result files."""
