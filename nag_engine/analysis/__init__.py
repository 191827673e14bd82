"""Measurement: sample-quality metrics (and, later, noise-level estimators and noise shift)."""
