#!/usr/bin/env bash
# Train the three character models from nothing, every stage recording its data (issue 13, point 7):
#   stage 1  ProtoNet body: 60-way episodes, rotations as extra classes, distorted images  -> $RUNS/stage1_protonet.pt
#   stage 2  ProtoMAML: second-order MAML, prototype head, 1 step at lr 0.01              -> $RUNS/stage2_protomaml.pt
#            (a starting point; carded only with WITH_PROTOMAML=1 bash scripts/models/card_character_models.sh)
#   stage 3  zero head, normalised features: second-order MAML, 5 steps at lr 0.001        -> $RUNS/stage3_zero.pt
#            (models/omniglot_conv4.pt)
#   stage 4  Meta-SGD: learned rates for the body, the head at lr 0.001 x way/5            -> $RUNS/stage4_metasgd.pt
#            (models/omniglot_metasgd.pt, the default)
#   stage 5  the LSTM meta-learner: its cell state starts at stage 3's body, its gates at lr 0.001 -> $RUNS/stage5_lstm.pt
#            (models/omniglot_lstm.pt); 5-way tasks only: on a 5-20-way mixture it learned step sizes for 20-way
#            heads that overshoot at 5-way (docs/character_model.md)
# All stages read Omniglot's background alphabets only (the default split; each checkpoint records it). A stage
# whose checkpoint is complete is skipped and a cut one resumed from its last save (every validation: stage 1 saves
# every 1000 iterations), so a run can stop and go on (on another machine).
# runs/reproduce/*.pt and runs/card_results/ (the cards' evaluations) are tracked by git: commit them when a stage
# saves, and a run cut short (a session's end, a lost machine) goes on from a fresh clone with the same command.
#
#   bash scripts/models/reproduce_character_models.sh                              # CPU: 3-6 h on 2 cores (below)
#   DATA_ROOT=data DEVICE=cuda bash scripts/models/reproduce_character_models.sh   # one GPU: ~10 min (estimated)
#   bash scripts/models/device_reproduce.sh                                        # on a lent GPU, with the cards
#
# Measured on 2 CPU cores (AMD EPYC, torch 2.14.1): stage 1 1.36 iterations/s on one VM (10000: ~2 h 3 min), 0.52-0.57
# on another (the run in runs/reproduce, 2026-12-02: 17677 s, ~4.9 h, over several sessions); stage 2 100
# iterations in 101 s; stage 3 150 iterations in 454 s; stage 4 300 iterations of 4 tasks in 821 s. Stage 1 took
# 6 min on an H100 shared with two other runs.
# Then the cards (CPU: hours, the 20-way 5-shot curves to step 50; every evaluation kept under runs/card_results):
#   bash scripts/models/card_character_models.sh
set -euo pipefail
DATA_ROOT=${DATA_ROOT:-../shared/data}
RUNS=${RUNS:-runs/reproduce}
DEVICE=${DEVICE:-auto}
mkdir -p "$RUNS"

stage() {  # name, then the train arguments
    local name=$1 out="$RUNS/$1.pt" resume=()
    shift
    case $(python - "$out" <<'PY'
import sys, torch
try:
    saved = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
except FileNotFoundError:
    print("absent")
    raise SystemExit
done = saved["training"]["iteration"] >= saved["config"]["iterations"]
print("complete" if done else "partial")
PY
    ) in
        complete) echo "$name: $out is complete, skipped"; return ;;
        partial) resume=(--resume) ;;
    esac
    echo "$name: training${resume:+ (resumed)} ($(date +%T))"
    python -m metacore train --data-root "$DATA_ROOT" --device "$DEVICE" --rotations --seed 0 "$@" "${resume[@]}" \
        --out "$out" >> "$RUNS/$name.log" 2>&1
    tr "\r" "\n" < "$RUNS/$name.log" | grep -E "^done" || true
}

stage stage1_protonet --algo protonet --augment --way 60 --shot 1-5 --query 15 --meta-batch 1 --meta-lr 1e-3 \
    --cosine --iterations 10000 --val-every 1000 --val-episodes 50 --batching loop
stage stage2_protomaml --algo maml --head proto --init "$RUNS/stage1_protonet.pt" --way 5-20 --shot 1-5 --query 5 \
    --steps 1 --inner-lr 0.01 --meta-batch 4 --meta-lr 1e-4 --iterations 100 --val-every 100 --val-episodes 50
stage stage3_zero --algo maml --head zero --init "$RUNS/stage2_protomaml.pt" --feature-scale 100 --way 5-20 \
    --shot 1-5 --query 10 --meta-batch 4 --steps 5 --inner-lr 0.001 --meta-lr 5e-5 --iterations 150 --val-every 50 \
    --val-episodes 50
stage stage4_metasgd --algo metasgd --body-rates-only --head zero --way-scaled-head --init "$RUNS/stage3_zero.pt" \
    --way 5-20 --shot 1-5 --query 10 --meta-batch 4 --steps 5 --inner-lr 0.001 --meta-lr "${STAGE4_META_LR:-5e-5}" \
    --iterations 300 --val-every 100 --val-episodes 100
stage stage5_lstm --algo lstm --head zero --init "$RUNS/stage3_zero.pt" --way 5 --shot 1-5 --query 10 \
    --meta-batch 4 --steps 5 --inner-lr 0.001 --meta-lr 5e-5 --rule-meta-lr 5e-3 --iterations 300 --val-every 100 \
    --val-episodes 100
echo "done ($(date +%T)): $RUNS/stage2_protomaml.pt (ProtoMAML), $RUNS/stage4_metasgd.pt (the default model)," \
    "$RUNS/stage5_lstm.pt (the LSTM meta-learner)"
