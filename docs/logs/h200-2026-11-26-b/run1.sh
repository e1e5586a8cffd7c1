#!/bin/bash
# Call 1: epoch benchmarks (eager vs compile, GPU alone), GPU profile, then the one-epoch screen in parallel.
set -u
MODE=${MODE:-gpu}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
D=$PWD/.gpu/data; L=$OUT/log.txt; B=$OUT/benchmarks-gpu.md
log() { echo "[$(el)s] $*" | tee -a $L; }
if [ "$MODE" = gpu ]; then DEV=cuda; EP="--epochs"; LIM='{}'; else DEV=cpu; LIM='{"limit_train": 256, "limit_test": 200, "model": "capsnet-tiny"}'; fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"; nproc; } >> $L 2>&1
if [ "$MODE" = gpu ]; then
  timeout 60 python3 benchmarks/epoch.py --device cuda --precision 32 --epochs 2 --data-dir $D --append $B >> $L 2>&1 || log "eager epoch failed"
  log "eager epoch done"
  timeout 170 python3 benchmarks/epoch.py --device cuda --precision 32 --compile --epochs 3 --data-dir $D --append $B > $OUT/compile.log 2>&1 || log "compile epoch failed"
  grep -v "^ " $OUT/compile.log | tail -n 30 >> $L
  log "compile epoch done"
  timeout 40 python3 benchmarks/profile_step.py --device cuda --precision 32 --append $B >> $L 2>&1 || log "profile failed"
  log "profile done"
fi
# One-epoch screen: W init std and the official code's options, 3 seeds each, one process per variant.
variant() {  # name std overrides-json
  for seed in 0 1 2; do
    over=$(python3 -c "import json,sys; d={**json.loads(sys.argv[1]), **json.loads(sys.argv[2]), 'seed': $seed, 'data_dir': '$D', 'output_dir': '/tmp/screen/$1-$seed', 'device': '$DEV'}; print(json.dumps(d))" "$3" "$LIM")
    timeout 150 python3 .gpu/screen.py $1 $2 "$over" 2>> $OUT/screen-errors.log | tail -n 1 >> $OUT/screen.jsonl
  done
}
rm -rf /tmp/screen
variant default 0 '{}' &
variant std0.01 0.01 '{}' &
variant std0.03 0.03 '{}' &
variant std0.05 0.05 '{}' &
variant std0.2 0.2 '{}' &
variant halve 0 '{"halve_margin": true}' &
variant bias 0 '{"digit_bias": true}' &
variant nodetach 0 '{"detach_intermediate": false}' &
variant official 0.01 '{"halve_margin": true, "digit_bias": true, "detach_intermediate": false}' &
wait
log "screen done"
python3 - $OUT/screen.jsonl >> $L <<'PY'
import json, sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    try: r = json.loads(line)
    except ValueError: continue
    rows[r["name"]].append(r["test_error"])
for name, errors in rows.items():
    print(f"{name:10s} mean {sum(errors)/len(errors):.2%}  " + " ".join(f"{e:.2%}" for e in errors))
PY
log "all done"
