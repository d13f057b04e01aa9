"""Depth Anything V2: checkpoints, configurations, the estimator."""
