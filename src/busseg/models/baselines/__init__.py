"""Baselines the papers compare against, one module per family."""
