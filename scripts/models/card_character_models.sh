#!/usr/bin/env bash
# Card the character models that scripts/models/reproduce_character_models.sh trains (stage 4, the default, then stage 3,
# then stage 5, the LSTM meta-learner; stage 2 with WITH_PROTOMAML=1): accuracy,
# curves to step 50 and the random-init contrast (model_card.py), then the "none of these" threshold (unsure).
# Writes models/<name>.pt/.json/.md (and copies them to COPY_TO as each is done, if set). Every evaluation is kept
# under runs/card_results/ as it finishes, and a curve cut short goes on from its last 20 episodes: commit
# runs/card_results and a run cut short (a session's end) goes on from a fresh clone with the same command.
#
#   bash scripts/models/card_character_models.sh                              # CPU: hours (the 20-way 5-shot curves)
#   DATA_ROOT=data DEVICE=cuda JOBS=4 bash scripts/models/card_character_models.sh
#   EPISODES=4 CURVE_STEPS=5 UNSURE_EPISODES=10 CONTRAST= ...           # a dry run (minutes); not a card to ship
set -euo pipefail
DATA_ROOT=${DATA_ROOT:-../shared/data}
RUNS=${RUNS:-runs/reproduce}
DEVICE=${DEVICE:-auto}
JOBS=${JOBS:-2}

card() {  # stage file, model name, default steps, default lr
    local stage=$1 name=$2 steps=$3 lr=$4
    echo "card $name ($(date +%T))"
    python scripts/models/model_card.py "$RUNS/$stage.pt" --suite omniglot --out "models/$name.pt" --data-root "$DATA_ROOT" \
        --steps "$steps" --inner-lr "$lr" --jobs "$JOBS" --episodes "${EPISODES:-600}" \
        --curve-steps "${CURVE_STEPS:-50}" ${CONTRAST---contrast} --command "bash scripts/models/reproduce_character_models.sh" &&
        copy "$name"  # && throughout: set -e is off inside a function called before ||
}
lstm_card() {  # the LSTM meta-learner: 5-way 1- and 5-shot, curves to step 10, beside MAML and a random init
    echo "card omniglot_lstm ($(date +%T))"
    python scripts/models/model_card.py "$RUNS/stage5_lstm.pt" --suite omniglot_5way --out models/omniglot_lstm.pt \
        --data-root "$DATA_ROOT" --steps 5 --inner-lr 0.001 --jobs "$JOBS" --episodes "${EPISODES:-600}" \
        --curve-steps 10 --compare models/omniglot_conv4.pt ${CONTRAST---contrast} \
        --command "bash scripts/models/reproduce_character_models.sh" && copy omniglot_lstm
}
unsure() {  # model name, steps, lr[, suite]: the threshold classify reads from the card
    python -m metacore unsure --checkpoint "models/$1.pt" --data-root "$DATA_ROOT" --dataset omniglot \
        --split evaluation --way 5 --shot 1 --query 5 --episodes "${UNSURE_EPISODES:-300}" --keep 0.97 --seed 0 \
        --device "$DEVICE" --card "models/$1.json" &&
        python scripts/models/model_card.py "models/$1.pt" --suite "${4:-omniglot}" --out "models/$1.pt" --steps "$2" \
            --inner-lr "$3" --data-root "$DATA_ROOT" --rerender &&
        copy "$1"
}
copy() {
    if [[ -n ${COPY_TO:-} ]]; then mkdir -p "$COPY_TO" && cp "models/$1".* "$COPY_TO/"; fi
}

failed=()  # a card that fails does not stop the next; the run ends saying which failed
{ card stage4_metasgd omniglot_metasgd 5 0.001 && unsure omniglot_metasgd 5 0.001; } || failed+=(omniglot_metasgd)
{ card stage3_zero omniglot_conv4 5 0.001 && unsure omniglot_conv4 5 0.001; } || failed+=(omniglot_conv4)
{ lstm_card && unsure omniglot_lstm 5 0.001 omniglot_5way; } || failed+=(omniglot_lstm)
if [[ -n ${WITH_PROTOMAML:-} ]]; then  # stage 2 as a model of its own: not shipped (the app offers the default), ~6 h on CPU
    card stage2_protomaml omniglot_protomaml 1 0.01 || failed+=(omniglot_protomaml)
fi
if (( ${#failed[@]} )); then
    echo "FAILED: ${failed[*]} ($(date +%T))"
    exit 1
fi
echo "cards done ($(date +%T))"
