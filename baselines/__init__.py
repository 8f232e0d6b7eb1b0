"""Baselines that the trained models are compared against, on the pipelines' own splits."""
