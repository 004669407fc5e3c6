"""Companion models for post-processing and evaluating generated images (SR, classifiers, LinearScope, metrics)."""
