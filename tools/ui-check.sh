#!/usr/bin/env bash
# What the MLflow UI shows of a grid, checked in a real browser: trains a small grid (two setups x
# two seeds, real CIFAR-10, 3 epochs), publishes its analysis into the store, serves the store
# with `mlflow server` and takes headless-Chromium screenshots of the runs table (the Dataset
# column), a run's System metrics tab and a figure of the analysis run. Needs chromium
# (apt-get install chromium). Writes into ${OUT:-ui-check}; docs/tracking.md shows the result.
#   tools/ui-check.sh /path/to/cifar10
set -euo pipefail
root=${1:?give the CIFAR-10 folder}; out=$(realpath -m "${OUT:-ui-check}"); port=${PORT:-5077}
mkdir -p "$out"; store="sqlite:///$out/mlflow.db"
python -m hybrid_exp -m model=separable,hybrid "seed=range(2)" data.root="$root" data.train_subset=4000 \
  data.val_size=500 data.eval_size=1000 model.width=16 model.depth=1 trainer.max_epochs=3 \
  logger.tracking_uri="$store" logger.experiment_name=ui-check hydra.sweep.dir="$out/multirun" > "$out/grid.log" 2>&1
python -m analysis --experiment ui-check --tracking-uri "$store" --out "$out/report" --publish "$out/bundle" > "$out/analysis.log"
ids=$(python -c "from mlflow.tracking import MlflowClient; c = MlflowClient('$store'); e = c.get_experiment_by_name('ui-check')
runs = {r.info.run_name: r.info.run_id for r in c.search_runs([e.experiment_id])}; print(e.experiment_id, runs['separable-seed0'], runs['analysis'])")
read -r experiment training analysis <<< "$ids"
mlflow server --backend-store-uri "$store" --host 127.0.0.1 --port "$port" > "$out/server.log" 2>&1 & server=$!
trap 'kill $server' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/health" > /dev/null && break; sleep 1; done
shot() {  # name, page: the app's own route, in its model-training view
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,1000 \
    --virtual-time-budget=60000 --screenshot="$out/$1.png" "http://127.0.0.1:$port/#/experiments/$experiment$2" > /dev/null 2>&1
}
shot runs "?workflowType=machine_learning"
shot system-metrics "/runs/$training/system-metrics?workflowType=machine_learning"
shot analysis "/runs/$analysis/artifacts/paired_seeds.png?workflowType=machine_learning"
ls "$out"/*.png
