"""Fixtures for a real, throwaway PostgreSQL server (filled in by the PostgreSQL tests' author)."""
