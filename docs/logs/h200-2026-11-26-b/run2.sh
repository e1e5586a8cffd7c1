#!/bin/bash
# Call 2: long runs in parallel under a time limit (compiled, CUDA graphs), then results, figures, fp16 weights.
set -u
MODE=${MODE:-gpu}
TRAIN_END=${TRAIN_END:-505}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
D=$PWD/.gpu/data; R=/tmp/gpu-runs; L=$OUT/log.txt
rm -rf $R; mkdir -p $R/logs $R/figures
log() { echo "[$(el)s] $*" | tee -a $L; }
if [ "$MODE" = gpu ]; then DEV=cuda; TINY=""; LIMIT=""; else DEV=cpu; TINY="--tiny"; LIMIT="--limit-train 512 --limit-test 200"; fi
MINUTES=$(python3 -c "print(round(max(0.3, ($TRAIN_END - $(el) - 45) / 60), 2))")
log "training with --time-limit $MINUTES"
row() {  # $1 experiment, $2 row, $3 runs dir, $4.. extra flags
  local e=$1 r=$2 dir=$3; shift 3
  exec python3 -m capsnet reproduce $e --rows $r --runs-dir $dir --data-dir $D --device $DEV --epochs 1000 --time-limit $MINUTES --compile --precision 32 --no-progress $TINY $LIMIT "$@" > $R/logs/$e-$r-$(basename $dir).log 2>&1
}
row table1 routing3-reconstruction $R/main &
row multimnist capsnet $R/main &
row multimnist capsnet $R/warmup --lr-warmup-steps 500 &
while [ -n "$(jobs -rp)" ] && [ $(el) -lt $TRAIN_END ]; do sleep 5; done
[ -n "$(jobs -rp)" ] && { log "sending SIGTERM to: $(jobs -rp | tr '\n' ' ')"; kill -TERM $(jobs -rp) 2>/dev/null; }
while [ -n "$(jobs -rp)" ] && [ $(el) -lt $((TRAIN_END + 20)) ]; do sleep 1; done
[ -n "$(jobs -rp)" ] && { log "killing: $(jobs -rp | tr '\n' ' ')"; kill -KILL $(jobs -rp) 2>/dev/null; }
wait
log "training done"
for f in $R/logs/*; do echo "== $f"; grep -v "^ " $f | tail -n 6; done >> $L
python3 - $R $DEV >> $L 2>&1 <<'PY'
import json, sys
from pathlib import Path
from capsnet.experiments import EXPERIMENTS, experiment_results
from capsnet.runtime import describe_machine
root, device = Path(sys.argv[1]), sys.argv[2]
for runs in (root / "main", root / "warmup"):
    for name, experiment in EXPERIMENTS.items():
        for row in experiment.rows:
            folder = runs / name / row.name
            if (folder / "config.json").exists() and not (folder / "machines.jsonl").exists():
                resolved = json.loads((folder / "config.json").read_text())["resolved"]
                (folder / "machines.jsonl").write_text(json.dumps({"machine": describe_machine(device), **resolved}) + "\n")
        if (runs / name).exists():
            experiment_results(name, runs)
            print((runs / name / "results.md").read_text())
PY
for spec in main/table1/routing3-reconstruction main/multimnist/capsnet warmup/multimnist/capsnet; do
  [ -f $R/$spec/last.pt ] && timeout 45 python3 -m capsnet figures $R/$spec/last.pt --device $DEV --data-dir $D --out $R/figures/${spec//\//-} --limit-test 2000 >> $L 2>&1 &
done
wait
python3 - $R >> $L 2>&1 <<'PY'
import sys
from pathlib import Path
from capsnet.training import load_checkpoint
from capsnet.training.checkpoint import save_checkpoint
path = Path(sys.argv[1]) / "main/table1/routing3-reconstruction/last.pt"
if path.exists():
    c = load_checkpoint(path)
    keep = {k: c[k] for k in ("config", "model_name", "model_kwargs", "device_type", "classes", "progress")}
    keep["model"] = {k: v.half() if v.is_floating_point() else v for k, v in c["model"].items()}
    save_checkpoint(Path(sys.argv[1]) / "mnist-fp16.pt", keep)
PY
tar czf $OUT/runs.tar.gz --exclude='*.pt' -C $R . 2>> $L
cp $R/mnist-fp16.pt $OUT/ 2>> $L
log "all done"; ls -la $OUT >> $L
