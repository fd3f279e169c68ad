"""Every run of an experiment as one DataFrame row."""
import pandas as pd
from mlflow.tracking import MlflowClient

TAGS = ("setup", "model", "block", "backbone", "seed", "config_hash", "git_sha", "error")


def load_runs(experiment: str, tracking_uri: str = "sqlite:///mlflow.db") -> pd.DataFrame:
    """One row per run: run_id, run_name, status, start_time, the tags above, params
    ``params`` and ``mult_adds``, and the final value of every metric (``test/error``, ...)."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"no experiment '{experiment}' in {tracking_uri}; "
                         f"existing: {', '.join(names) or 'none'}")
    runs, token = [], None
    while True:  # every page
        page = client.search_runs([found.experiment_id], max_results=1000, page_token=token)
        runs += page
        if not (token := page.token):
            break
    rows = [{"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
             "start_time": pd.to_datetime(r.info.start_time, unit="ms"),
             **{t: r.data.tags.get(t) for t in TAGS},
             **{p: r.data.params.get(p) for p in ("params", "mult_adds")},
             **r.data.metrics} for r in runs]
    frame = pd.DataFrame(rows)
    if not frame.empty:
        for column in ("seed", "params", "mult_adds"):
            frame[column] = pd.to_numeric(frame[column])
    return frame
