"""Ranking and plots of lipsweep results; reads only the Parquet dataset (no torch)."""
