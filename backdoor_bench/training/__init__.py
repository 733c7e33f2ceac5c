"""Training: Lightning modules (one per learning scheme), losses, and the shared fit/predict helpers."""
