"""Shared stage plumbing: CLI entry, Ray connection, MLflow tracking, progress and summaries."""
