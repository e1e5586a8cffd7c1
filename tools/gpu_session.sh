#!/usr/bin/env bash
# The GPU targets of docs/results.md in one call of a lent GPU (15 minutes of device time, start-up included):
# the paper's MNIST model for as many epochs as fit, and the affine-robustness rows (CapsNet and CNN on 40x40
# translated MNIST, the paper's early stopping, tested on affnist-synthetic), all sharing the GPU, then their
# results tables and figures. Runs in the repository root on the GPU machine, from the source tree.
#
#   mkdir -p .gpu/data && cp -r ../shared/data/mnist .gpu/data/   # here, once; .gpu/ is in .git/info/exclude
#   run(command="bash tools/gpu_session.sh", carry=[".gpu"], timeout_s=600)
#   MODE=cpu TRAIN_SECONDS=60 OUT=/tmp/out bash tools/gpu_session.sh  # a dry run on the CPU, tiny models
#
# Everything to keep lands in $OUT: log.txt, each row's config.json and metrics.jsonl, results tables, figures.
set -u
shopt -s nullglob
MODE=${MODE:-gpu}
TRAIN_SECONDS=${TRAIN_SECONDS:-420}  # training and testing of every run, after start-up; figures come after
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
log() { echo "[$(elapsed) s] $*" | tee -a "$OUT/log.txt"; }
DATA=$PWD/.gpu/data
RUNS=$(mktemp -d) && mkdir -p "$RUNS/logs" "$OUT"
if [ "$MODE" = gpu ]; then
  DEVICE=cuda
  FLAGS=(--compile --precision 32)
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> "$OUT/log.txt" 2>&1
else
  DEVICE=cpu
  FLAGS=(--tiny --limit-train 512 --limit-test 200)
fi
python3 -c "import torch; print('torch', torch.__version__)" >> "$OUT/log.txt" 2>&1
MINUTES=$(python3 -c "print(round(max(0.2, ($TRAIN_SECONDS - $(elapsed)) / 60), 2))")
log "training for about $MINUTES minutes"

row() {  # experiment row: one process per row, so that the rows share the GPU at once
  python3 -m capsnet reproduce "$1" --rows "$2" --runs-dir "$RUNS" --data-dir "$DATA" --epochs 1000 \
    --time-limit "$MINUTES" --save-every 2 --no-progress --device "$DEVICE" "${FLAGS[@]}" \
    > "$RUNS/logs/$1-$2.log" 2>&1
  echo "$1/$2 exited with $?" >> "$RUNS/logs/exits.txt"
}
stop_runs() {  # $1 signal: to the python processes of the row jobs alone (the jobs' children)
  local jobs_running
  jobs_running=$(jobs -rp | paste -sd, -)
  [ -n "$jobs_running" ] && pkill "-$1" -P "$jobs_running"
}
row table1 routing3-reconstruction &
row affnist capsnet &
row affnist cnn &
# --time-limit stops at an epoch's end; past the budget by a minute, SIGTERM makes each run save and stop.
while [ -n "$(jobs -rp)" ] && [ "$(elapsed)" -lt $((TRAIN_SECONDS + 60)) ]; do sleep 5; done
[ -n "$(jobs -rp)" ] && { log "SIGTERM to the runs still going"; stop_runs TERM; }
while [ -n "$(jobs -rp)" ] && [ "$(elapsed)" -lt $((TRAIN_SECONDS + 80)) ]; do sleep 1; done
[ -n "$(jobs -rp)" ] && { log "SIGKILL to the runs still going"; stop_runs KILL; }
wait
log "training done"
cat "$RUNS/logs/exits.txt" >> "$OUT/log.txt"
for file in "$RUNS"/logs/*.log; do echo "== $file"; grep "^epoch\|interrupted\|rror" "$file" | tail -n 8; done >> "$OUT/log.txt"

python3 - "$RUNS" >> "$OUT/log.txt" 2>&1 <<'PY'  # the tables again, now that every row has stopped
import sys
from pathlib import Path
from capsnet.experiments import experiment_results
runs = Path(sys.argv[1])
for name in ("table1", "affnist"):
    if (runs / name).exists():
        experiment_results(name, runs)
        print((runs / name / "results.md").read_text())
PY
for folder in "$RUNS"/*/*/; do  # the records first, not the checkpoints (too large to bring back)
  keep="$OUT/runs/${folder#"$RUNS"/}" && mkdir -p "$keep"
  cp "$folder"/*.json* "$keep" 2>/dev/null
done
for experiment in table1 affnist; do cp "$RUNS/$experiment"/results.* "$OUT/runs/$experiment/" 2>/dev/null; done
cp "$RUNS/logs/"*.log "$OUT/runs/" 2>/dev/null
log "records copied"
# capsnet evaluate keeps the test set on the CPU and moves batches to the model's device: checked on the GPU here.
[ -f "$RUNS/table1/routing3-reconstruction/best.pt" ] && timeout 60 python3 -m capsnet evaluate \
  "$RUNS/table1/routing3-reconstruction/best.pt" --data-dir "$DATA" --limit-test 2000 --device "$DEVICE" \
  >> "$OUT/log.txt" 2>&1
for run in table1/routing3-reconstruction affnist/capsnet; do  # figures with what time is left of 570 s
  left=$((570 - $(elapsed)))
  [ -f "$RUNS/$run/best.pt" ] && [ "$left" -gt 10 ] && timeout "$left" python3 -m capsnet figures \
    "$RUNS/$run/best.pt" --data-dir "$DATA" --out "$OUT/figures/${run//\//-}" --limit-test 2000 --device "$DEVICE" \
    >> "$OUT/log.txt" 2>&1
done
rm -rf "$RUNS"
log "done"
