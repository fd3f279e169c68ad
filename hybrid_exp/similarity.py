"""python -m hybrid_exp.similarity --experiment NAME [--baseline separable] [--data-root DIR] [--tracking-uri URI]

Linear CKA (Kornblith et al. 2019) between each finished run's representations of the evaluation
images and those of the baseline run of its backbone, protocol and seed, at the end of every
stage of the backbone and at the pooled features its classifier reads; and, as the reference
level, between two baseline runs of neighbouring seeds (two trainings of one architecture).
The networks are rebuilt from each run's stored ``config.yaml`` and final weights through the
registry (only the project's own classes), as ``hybrid_exp.evaluate`` does; a fused array's
members stored their own weights, taken apart exactly. The estimate is the minibatch form of
Nguyen, Raghu and Kornblith (2021): unbiased HSIC estimates of each batch of the same images,
summed in float64, so no n x n Gram matrix of the whole set is held.

Each value is logged into the run it describes: ``cka/<point>`` on a setup's run (tag
``cka.baseline_run``), ``cka_reference/<point>`` on a baseline run (tag ``cka.reference_run``),
points ``stage1``, ``stage2``, ..., ``pooled``; ``analysis`` reads them from there. A run that
stored no weights is named, tagged ``cka.error`` and set aside.
"""
import argparse
import os

POOLED = "pooled"  # the features the classifier reads, globally average-pooled


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(prog="python -m hybrid_exp.similarity", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--experiment", required=True, help="MLflow experiment name")
    cli.add_argument("--baseline", default="separable",
                     help="setup (or unit, per backbone) the others are compared with (default: %(default)s)")
    cli.add_argument("--data-root", help="where the dataset is, if not where the runs found it")
    cli.add_argument("--batch-size", type=int, default=500,
                     help="images per minibatch of the estimate (default: %(default)s)")
    cli.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"))
    return cli


def hsic(k, l):
    """The unbiased HSIC estimate (Song et al. 2012) of two n x n Gram matrices, n >= 4."""
    n = k.shape[0]
    k, l = k.clone().fill_diagonal_(0), l.clone().fill_diagonal_(0)
    kl = k @ l
    return (kl.trace() + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2 * kl.sum() / (n - 2)) / (n * (n - 3))


class MinibatchCKA:
    """Linear CKA of two representations of the same images, from their minibatches: the sums
    of each batch's unbiased HSIC estimates (cross, and each with itself), in float64."""

    def __init__(self):
        self.xy = self.xx = self.yy = 0.0

    def update(self, x, y) -> None:  # (n, ...), (n, ...): the same n images, n >= 4
        x, y = x.flatten(1).double(), y.flatten(1).double()
        k, l = x @ x.T, y @ y.T  # (n, n) linear kernels
        self.xy, self.xx, self.yy = self.xy + hsic(k, l), self.xx + hsic(k, k), self.yy + hsic(l, l)

    def value(self) -> float:
        return float(self.xy / (self.xx * self.yy).sqrt())


def representations(net, x) -> dict:
    """The outputs of ``net.stage_ends()`` (``stage1``, ...) and its pooled features for ``x``."""
    found, hooks = {}, []
    for i, module in enumerate(net.stage_ends()):
        keep = lambda module, args, out, name=f"stage{i + 1}": found.__setitem__(name, out)
        hooks.append(module.register_forward_hook(keep))
    pooled = lambda module, args: found.__setitem__(POOLED, args[0] if args[0].dim() == 2 else args[0].mean(dim=(2, 3)))
    hooks.append((net.head if hasattr(net, "head") else net.classifier).register_forward_pre_hook(pooled))
    try:
        net(x)
    finally:
        for hook in hooks:
            hook.remove()
    return found


def linear_cka(net_a, net_b, batches) -> dict[str, float]:
    """{point: linear CKA} of two networks over ``batches`` (x, y) of the same images; a last
    batch of fewer than 4 images, too few for the estimate, is left out."""
    import torch

    sums = {}
    with torch.no_grad():
        for x, _ in batches:
            if len(x) < 4:
                continue
            a, b = representations(net_a, x), representations(net_b, x)
            for point in a:
                sums.setdefault(point, MinibatchCKA()).update(a[point], b[point])
    return {point: total.value() for point, total in sums.items()}


def pairs(runs, baseline: str) -> tuple[list[tuple], list[str]]:
    """(kind, run, other run) of every comparison the finished ``runs`` allow: each setup's run
    against the baseline run of its protocol, backbone and seed (``cka``), each baseline run
    against the next seed's (``cka_reference``, cyclic); and a sentence per group that cannot."""
    from analysis.table import pick

    found, notes = [], []
    for (_, backbone), group in runs.groupby(["protocol_hash", "backbone"], sort=True):
        setups = sorted(group.setup.unique())
        base = pick(setups, dict(zip(group.setup, group.block)), baseline)
        if base is None:
            notes.append(f"{backbone}: no '{baseline}' run under the protocol of {', '.join(setups)}: not compared")
            continue
        by_seed = group[group.setup == base].set_index("seed").run_id.sort_index()
        for run in group[group.setup != base].itertuples():
            if run.seed in by_seed.index:
                found.append(("cka", run.run_id, by_seed[run.seed]))
        if len(by_seed) < 2:
            notes.append(f"{backbone}: one '{base}' seed only: no reference level (run two seeds at least)")
        else:
            found += [("cka_reference", a, b) for a, b in zip(by_seed, [*by_seed[1:], by_seed.iloc[0]])]
    return found, notes


def similarity(experiment: str, tracking_uri: str, baseline: str = "separable",
               data_root: str | None = None, batch_size: int = 500, log=print) -> list[dict]:
    """Compute and log every comparison of ``experiment`` (``pairs``); one row per comparison."""
    import torch

    from analysis.runs import clean, client_and_experiment, load_runs
    from hybrid_exp.data import Batches
    from hybrid_exp.evaluate import NoWeights, stored_run

    client, _ = client_and_experiment(experiment, tracking_uri)
    runs = clean(load_runs(experiment, tracking_uri)).finished
    found, notes = pairs(runs, baseline)
    for note in notes:
        log(note)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    protocol = dict(zip(runs.run_id, runs.protocol_hash))
    name = dict(zip(runs.run_id, runs.run_name))
    networks, images, rows = {}, {}, []

    def network(run_id: str):
        """The run's trained network (None: it stored no weights, said once); the first run of
        a protocol also gives that protocol's evaluation batches."""
        if run_id not in networks:
            try:
                net, data, _ = stored_run(run_id, client, device, data_root)
            except NoWeights as e:
                client.set_tag(run_id, "cka.error", str(e))
                log(f"set aside, {name[run_id]}: {e}")
                net = None
            else:
                if protocol[run_id] not in images:  # the evaluation subset, as the runs scored it
                    data.setup()
                    images[protocol[run_id]] = [(x.to(device), y) for x, y in Batches(
                        *data.splits["test"], batch_size, mean=data.mean, std=data.std)]
            networks[run_id] = net
        return networks[run_id]

    for kind, run_id, other in found:
        if network(run_id) is None or network(other) is None:
            continue
        values = linear_cka(network(run_id), network(other), images[protocol[run_id]])
        for point, value in values.items():
            client.log_metric(run_id, f"{kind}/{point}", value)
        client.set_tag(run_id, "cka.baseline_run" if kind == "cka" else "cka.reference_run", other)
        rows.append({"kind": kind, "run": name[run_id], "other": name[other], **values})
        log(f"{name[run_id]} vs {name[other]}: " + ", ".join(f"{p} {v:.3f}" for p, v in values.items()))
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    from hybrid_exp import process
    from hybrid_exp.errors import reported
    from hybrid_exp.store import resolve_tracking_uri

    process.setup()

    with reported():
        rows = similarity(args.experiment, resolve_tracking_uri(args.tracking_uri)[0], args.baseline,
                          args.data_root, args.batch_size)
    print(f"{len(rows)} comparisons logged into experiment '{args.experiment}'; "
          f"python -m analysis --experiment {args.experiment} reports them")


if __name__ == "__main__":
    main()
