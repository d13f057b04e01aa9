"""The runner as a depth server: `python -m spatialforge.runner serve` (see app.py)."""
