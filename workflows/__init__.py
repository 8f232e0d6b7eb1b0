"""Workflows over ``trainer.experiment.run``: sweeps, the leaderboard, NCF pre-training."""
