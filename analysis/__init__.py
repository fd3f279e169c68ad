"""Reads hybrid-exp runs from MLflow (never the training code) and aggregates them:
``python -m analysis --experiment NAME`` writes the paper's table, statistics, figures, report."""
__all__ = ["AnalysisError", "clean", "load_history", "load_runs"]


def __getattr__(name: str):
    """The names above, imported on first use: ``python -m analysis --help`` stays instant."""
    if name in __all__:
        from analysis import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
