#!/usr/bin/env bash
# The character model with a zero head (issue 13): second-order MAML through K=5 inner steps, started
# from the ProtoNet-pretrained body of the shipped ProtoMAML model, then its step curves 0..50 on the
# card protocol. Three recipes (inner lr / meta lr 0.05 / 1e-4, 0.05 / 3e-4, 0.1 / 3e-4) train side by side; each stops after TRAIN_SECONDS
# (its last checkpoint is the one saved at the last validation).
#
#   DATA_ROOT=../shared/data OUT=runs/inner TRAIN_SECONDS=330 bash scripts/train_character_model.sh
set -uo pipefail
DATA_ROOT=${DATA_ROOT:-../shared/data}
OUT=${OUT:-runs/inner}
TRAIN_SECONDS=${TRAIN_SECONDS:-330}
INIT=${INIT:-models/omniglot_conv4.pt}
mkdir -p "$OUT"
recipe() {  # name inner_lr meta_lr
    timeout "$TRAIN_SECONDS" python -m metacore train --algo maml --head zero --init "$INIT" \
        --data-root "$DATA_ROOT" --rotations --way 5-20 --shot 1-5 --query 10 --meta-batch 16 \
        --steps 5 --inner-lr "$2" --meta-lr "$3" --iterations 100000 --val-every ${VAL_EVERY:-100} --val-episodes ${VAL_EPISODES:-100} \
        --out "$OUT/$1.pt" > "$OUT/$1.log" 2>&1
}
curves() {  # name
    for setting in "5 1" "5 5" "20 1" "20 5"; do
        set -- "$1" $setting
        python -m metacore evaluate --checkpoint "$OUT/$1.pt" --data-root "$DATA_ROOT" --split evaluation \
            --way "$2" --shot "$3" --query 15 --episodes ${EPISODES:-600} --seed 0 --steps-curve 0:50 --json \
            > "$OUT/$1_curve_${2}w${3}s.json" 2>> "$OUT/$1.log"
    done
}
recipe lr005 0.05 1e-4 &
recipe lr005m 0.05 3e-4 &
recipe lr010 0.1 3e-4 &
wait
for f in "$OUT"/lr0*.log; do echo "$f"; tr "\r" "\n" < "$f" | grep "^iter" | tail -n 4; done
curves lr005 &
curves lr005m &
curves lr010 &
wait
python - "$OUT" <<'PY'
import json, sys, pathlib
for f in sorted(pathlib.Path(sys.argv[1]).glob("*_curve_*.json")):
    rows = json.loads(f.read_text())["curve"]
    print(f.stem, " ".join(f"{r['accuracy']:.1f}" for r in rows[:6]), "| 10:", f"{rows[10]['accuracy']:.1f}",
          "| 50:", f"{rows[50]['accuracy']:.1f}", "| peak", f"{max(r['accuracy'] for r in rows):.2f}")
PY
