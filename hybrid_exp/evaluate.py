"""python -m hybrid_exp.evaluate RUN [--split subset|full] [--image-folder DIR] [--weights model.pt|best.pt] [--tracking-uri URI] [--experiment NAME]

Evaluates the trained weights of a FINISHED run (its ``model.pt`` artifact, with the network
rebuilt from its ``config.yaml``) on the evaluation subset of the test set (``subset``, the
paper's metric), the whole test set (``full``), or a folder of images in one sub-folder per
class of the training data (``--image-folder``); logs the loss and error into that run as
``evaluate/<split>/loss`` and ``evaluate/<split>/error`` and prints them. ``--weights best.pt``
evaluates the best validation epoch's weights instead (runs trained with
``callbacks=best_weights``), logged as ``evaluate/<split>/best/...``. RUN is a run id, or a
run name (``separable-seed3``: the newest FINISHED run of that name in the experiment).
"""
import argparse
import os

from hybrid_exp.errors import NoWeights, UserError, reported

SPLITS = {"subset": "test", "full": "test_full"}  # the data module's names


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m hybrid_exp.evaluate", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("run", help="run id, or run name (the newest FINISHED run of that name)")
    cli.add_argument("--split", choices=sorted(SPLITS), default="subset",
                     help="the test set's evaluation subset or all of it (default: %(default)s)")
    cli.add_argument("--image-folder", help="evaluate on <folder>/<class>/*.png|jpg instead")
    cli.add_argument("--weights", choices=("model.pt", "best.pt"), default="model.pt",
                     help="the final weights, or the best validation epoch's (default: %(default)s)")
    cli.add_argument("--data-root", help="where the dataset is, if not where the run found it")
    cli.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    cli.add_argument("--experiment", default="hybrid-exp", help="where to look a run name up")
    return cli


def find_run(client, experiment: str, run: str):
    """The run with this id, else the newest FINISHED run of this name in ``experiment``."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run)
    except MlflowException:
        pass
    if "'" in run or '"' in run:  # the name goes into a search filter
        raise UserError(f"no run is named {run}: hybrid-exp names runs <setup>-seed<seed> (no quotes); "
                        f"give a run name or id")
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], f"attributes.run_name = '{run}' and "
                              "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                              max_results=1) if found else []
    if not runs:
        raise UserError(f"no run with id or name '{run}' in experiment '{experiment}' of the "
                        f"store (--experiment, --tracking-uri)")
    return runs[0]


def stored_run(run_id: str, client, device, data_root: str | None = None, weights: str = "model.pt"):
    """(network with the run's trained weights on ``device``, its data module, its config),
    rebuilt from the run's ``config.yaml`` through the registry (only the project's own classes,
    both checked before either is built or the weights are read)."""
    import tempfile

    import torch

    from hybrid_exp.registry import build, stored

    stored_files = {a.path for a in client.list_artifacts(run_id)}
    if "config.yaml" not in stored_files:
        raise NoWeights(f"run {run_id} has no config.yaml to rebuild its network from: it was not "
                        f"logged by hybrid-exp's training, or its artifacts were deleted")
    if weights not in stored_files:
        raise NoWeights(f"run {run_id} has no {weights}: " + (
            "only runs trained with callbacks=best_weights store it" if weights == "best.pt" else
            "only runs that FINISHED with this version store their weights; train it again (rerun=true)"))
    with tempfile.TemporaryDirectory() as folder:
        source = f"run {run_id}'s config.yaml"  # an artifact: anyone who can write to the store can edit it
        cfg = stored(client.download_artifacts(run_id, "config.yaml", folder), source)
        if data_root:
            cfg.data.root = data_root
        net = build(cfg, "model", source)
        data = build(cfg, "data", source, seeds=[cfg.seed])
        state = torch.load(client.download_artifacts(run_id, weights, folder), map_location=device,
                           weights_only=True)
    net.load_state_dict(state)
    return net.to(device).eval(), data, cfg


def evaluate(run_id: str, client, split: str = "subset", image_folder: str | None = None,
             data_root: str | None = None, weights: str = "model.pt") -> dict[str, float]:
    """Loss and error (%) of the run's trained weights on ``split`` (or ``image_folder``)."""
    from pathlib import Path

    import torch

    from hybrid_exp.data import Batches, read_class_folders
    from hybrid_exp.module import Classifier

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net, data, _ = stored_run(run_id, client, device, data_root, weights)
    if image_folder or data.mean is None:  # an image folder's statistics come with its data
        data.setup()
    if image_folder:  # the training data's classes, in its label order
        x, y = read_class_folders(Path(image_folder), data.classes, size=data.splits["train"][0].shape[1])
        split_name = "image_folder"
        images, labels = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        rows = torch.arange(len(x), device=device)[None]
    else:
        data.setup()
        images, labels, rows = data.splits[SPLITS[split]]
        split_name = split
    module = Classifier(net.to(device)).eval()
    sums = torch.zeros(1, 2, device=device)
    with torch.no_grad():
        for x, y in Batches(images, labels, rows, batch_size=256, mean=data.mean, std=data.std):
            module.evaluate((x.to(device), y.to(device)), sums)  # the data module sets up on the CPU
    loss, errors = sums[0].tolist()
    prefix = f"evaluate/{split_name}/" + ("best/" if weights == "best.pt" else "")
    metrics = {f"{prefix}loss": loss / rows.shape[1], f"{prefix}error": 100 * errors / rows.shape[1]}
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    return metrics


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    from hybrid_exp import process

    process.setup()
    from hybrid_exp.store import Client, resolve_tracking_uri

    with reported():
        client = Client(resolve_tracking_uri(args.tracking_uri)[0])
        run = find_run(client, args.experiment, args.run)
        metrics = evaluate(run.info.run_id, client, args.split, args.image_folder, args.data_root,
                           args.weights)
    print(f"{run.info.run_name} ({run.info.run_id}): " + ", ".join(
        f"{k} {v:.4g}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
