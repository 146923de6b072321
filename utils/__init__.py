"""Shared pieces of train.py, evaluate.py and analyze_rank.py: one module per concept."""
