#!/bin/bash
# One GPU session: smoke test, benchmarks (GPU alone), then every reproduce row in parallel under a time limit,
# then results tables and figures. Everything that must come back goes under $OUT (at most 8 files).
# MODE=dry runs the same pipeline on the CPU with tiny models, to check the script itself.
set -u
MODE=${MODE:-gpu}
END=${END:-540}            # seconds after start by which everything must be packed
TRAIN_END=${TRAIN_END:-490} # training processes get SIGTERM at this second
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
D=$PWD/.gpu/data
R=/tmp/gpu-runs
rm -rf $R /tmp/smoke*; mkdir -p $R/logs $R/figures
L=$OUT/log.txt
log() { echo "[$(el)s] $*" | tee -a $L; }
if [ "$MODE" = gpu ]; then
  DEV=cuda; TINY=""; LIMIT=""; BENCH_REPEATS=20
else
  DEV=cpu; TINY="--tiny"; LIMIT="--limit-train 512 --limit-test 200"; BENCH_REPEATS=2
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
  nproc; free -g | head -2; } >> $L 2>&1

# 1. Smoke: the three kinds of training run, tiny, in parallel. Fall back to safer flags if the default fails.
smoke() {  # $1: extra flags
  local ok=0
  timeout 120 python3 -m capsnet train --model capsnet-tiny --device $DEV --data-dir $D --limit-train 1024 --limit-test 500 --epochs 1 --no-progress --output-dir /tmp/smoke1 $1 > $R/logs/smoke1.log 2>&1 &
  timeout 120 python3 -m capsnet train --model capsnet-tiny --dataset multimnist --device $DEV --data-dir $D --limit-train 1024 --limit-test 500 --epochs 1 --no-progress --output-dir /tmp/smoke2 $1 > $R/logs/smoke2.log 2>&1 &
  timeout 120 python3 -m capsnet train --model baseline-cnn-tiny --device $DEV --data-dir $D --limit-train 1024 --limit-test 500 --epochs 1 --no-progress --output-dir /tmp/smoke3 $1 > $R/logs/smoke3.log 2>&1 &
  for job in $(jobs -p); do wait $job || ok=1; done
  tail -n 3 $R/logs/smoke*.log >> $L
  rm -rf /tmp/smoke1 /tmp/smoke2 /tmp/smoke3
  return $ok
}
for FLAGS in "" "--no-channels-last" "--no-channels-last --precision 32"; do
  smoke "$FLAGS" && break
  log "smoke failed with flags '$FLAGS'"; cat $R/logs/smoke*.log | grep -v "^ " | tail -n 20 >> $L
done
log "smoke done, flags: '$FLAGS'"

# 2. Benchmarks, the GPU to themselves.
B=$OUT/benchmarks-gpu.md
if [ "$MODE" = gpu ]; then
  timeout 100 python3 benchmarks/train_step.py --device cuda --batch-sizes 128 512 --precisions 32 bf16 --repeats $BENCH_REPEATS --append $B >> $L 2>&1 || log "train_step failed"
  log "train_step done"
  timeout 50 python3 benchmarks/epoch.py --device cuda --precision bf16 --data-dir $D --append $B >> $L 2>&1 || log "epoch bf16 failed"
  timeout 50 python3 benchmarks/epoch.py --device cuda --precision 32 --data-dir $D --append $B >> $L 2>&1 || log "epoch fp32 failed"
  log "epoch done"
  timeout 45 python3 benchmarks/profile_step.py --device cuda --precision bf16 --append $B >> $L 2>&1 || log "profile failed"
  log "profile done"
fi

# 3. Every row of the paper's experiments at once, each stopped at an epoch end by --time-limit.
# (training processes get SIGTERM at TRAIN_END)
MINUTES=$(python3 -c "print(round(max(0.5, ($TRAIN_END - $(el) - 60) / 60), 2))")
log "training rows with --time-limit $MINUTES"
row() {  # $1 experiment, $2 row
  exec python3 -m capsnet reproduce $1 --rows $2 --runs-dir $R --data-dir $D --device $DEV --epochs 1000 --time-limit $MINUTES --no-progress $TINY $LIMIT $FLAGS > $R/logs/$1-$2.log 2>&1
}
for r in routing3-reconstruction routing3-no-reconstruction routing1-reconstruction routing1-no-reconstruction baseline-cnn; do
  row table1 $r &
done
row multimnist capsnet &
row affnist capsnet &
row affnist cnn &
while [ -n "$(jobs -rp)" ] && [ $(el) -lt $TRAIN_END ]; do sleep 5; done
# SIGTERM: background jobs of a script ignore SIGINT; capsnet saves last.pt on SIGTERM at the next batch.
[ -n "$(jobs -rp)" ] && { log "sending SIGTERM to: $(jobs -rp | tr '\n' ' ')"; kill -TERM $(jobs -rp) 2>/dev/null; }
while [ -n "$(jobs -rp)" ] && [ $(el) -lt $((TRAIN_END + 20)) ]; do sleep 1; done
[ -n "$(jobs -rp)" ] && { log "killing: $(jobs -rp | tr '\n' ' ')"; kill -KILL $(jobs -rp) 2>/dev/null; }
wait
log "training done"
for f in $R/logs/table1-* $R/logs/multimnist-* $R/logs/affnist-*; do echo "== $f"; tail -n 4 $f; done >> $L

# 4. Results tables (rows stopped by SIGINT get their machine line here), figures, a small weights file.
python3 - $R $DEV >> $L 2>&1 <<'EOF'
import json, sys
from pathlib import Path
import torch
from capsnet.experiments import EXPERIMENTS, experiment_results
from capsnet.runtime import describe_machine
runs, device = Path(sys.argv[1]), sys.argv[2]
for name, experiment in EXPERIMENTS.items():
    for row in experiment.rows:
        folder = runs / name / row.name
        if (folder / "config.json").exists() and not (folder / "machines.jsonl").exists():
            resolved = json.loads((folder / "config.json").read_text())["resolved"]
            (folder / "machines.jsonl").write_text(json.dumps({"machine": describe_machine(device), **resolved}) + "\n")
    if (runs / name).exists():
        experiment_results(name, runs)
        print((runs / name / "results.md").read_text())
EOF
for spec in table1/routing3-reconstruction multimnist/capsnet affnist/capsnet; do
  [ -f $R/$spec/last.pt ] && timeout 60 python3 -m capsnet figures $R/$spec/last.pt --device $DEV --data-dir $D --out $R/figures/${spec//\//-} --limit-test 2000 >> $L 2>&1 &
done
wait
python3 - $R >> $L 2>&1 <<'EOF'
import sys
from pathlib import Path
import torch
from capsnet.training import load_checkpoint
from capsnet.training.checkpoint import save_checkpoint
runs = Path(sys.argv[1])
for name in ("table1/routing3-reconstruction",):
    path = runs / name / "last.pt"
    if path.exists():
        c = load_checkpoint(path)
        keep = {k: c[k] for k in ("config", "model_name", "model_kwargs", "device_type", "classes", "progress")}
        keep["model"] = {k: v.half() if v.is_floating_point() else v for k, v in c["model"].items()}
        out = runs / (name.replace("/", "-") + "-fp16.pt")
        save_checkpoint(out, keep)
        print(out, out.stat().st_size)
EOF
tar czf $OUT/runs.tar.gz --exclude='*.pt' -C $R . 2>> $L
cp $R/table1-routing3-reconstruction-fp16.pt $OUT/ 2>> $L  # the MultiMNIST model is over 16 MiB even in fp16
log "all done"
ls -la $OUT >> $L
