"""Fixtures for a real `mlflow server` process on loopback (filled in by the tracking tests' author)."""
