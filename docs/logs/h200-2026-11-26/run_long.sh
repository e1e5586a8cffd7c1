#!/bin/bash
# Second GPU call: the paper's main row (3 routing iterations + reconstruction) alone on the GPU, fp32, for as many
# epochs as fit in MINUTES, then its figures and a small fp16 weights file.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
MINUTES=${MINUTES:-4.7}
D=$PWD/.gpu/data
R=/tmp/gpu-runs2
rm -rf $R; mkdir -p $R/figures
L=$OUT/log.txt
python3 -m capsnet reproduce table1 --rows routing3-reconstruction --runs-dir $R --data-dir $D --device cuda --precision 32 --epochs 1000 --time-limit $MINUTES --no-progress >> $L 2>&1
timeout 25 python3 -m capsnet figures $R/table1/routing3-reconstruction/last.pt --device cuda --data-dir $D --out $R/figures --limit-test 2000 >> $L 2>&1
python3 - $R >> $L 2>&1 <<'PY'
import sys
from pathlib import Path
from capsnet.training import load_checkpoint
from capsnet.training.checkpoint import save_checkpoint
path = Path(sys.argv[1]) / "table1/routing3-reconstruction/last.pt"
c = load_checkpoint(path)
keep = {k: c[k] for k in ("config", "model_name", "model_kwargs", "device_type", "classes", "progress")}
keep["model"] = {k: v.half() if v.is_floating_point() else v for k, v in c["model"].items()}
save_checkpoint(Path(sys.argv[1]) / "routing3-reconstruction-long-fp16.pt", keep)
PY
tar czf $OUT/runs2.tar.gz --exclude='*.pt' -C $R . 2>> $L
cp $R/routing3-reconstruction-long-fp16.pt $OUT/ 2>> $L
echo done >> $L
