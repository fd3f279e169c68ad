"""Reads hybrid-exp runs from MLflow (never the training code) and aggregates them:
``python -m analysis --experiment NAME`` writes the paper's table, statistics, figures, report."""
from analysis.runs import AnalysisError, clean, load_history, load_runs

__all__ = ["AnalysisError", "clean", "load_history", "load_runs"]
