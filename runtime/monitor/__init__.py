"""Monitors: samples, checks, drift statistics, the inference log."""
