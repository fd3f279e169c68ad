"""Reads hybrid-exp runs from MLflow (never the training code) and aggregates them."""
from analysis.runs import load_runs

__all__ = ["load_runs"]
