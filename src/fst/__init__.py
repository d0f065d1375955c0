"""Fast-Slow Training: slow weights by RL (CISPO), fast weights by GEPA, as file-based stages."""
