"""Serving many requests at once on one model: continuous batching over the headcode cache."""
