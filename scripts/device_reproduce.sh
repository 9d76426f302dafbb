#!/usr/bin/env bash
# On a lent GPU machine (the device tool): finish the character models from nothing (scripts/
# reproduce_character_models.sh, resumed from the stages committed under runs/reproduce), then card them, the
# default first. Everything is written under $OUT as it is made, so a run cut by its time limit still returns what
# it finished, and the next run (here or on CPU) goes on from there.
#
# Here, once:   mkdir -p data && tar czf data/omniglot.tgz -C ../shared/data omniglot-py
# Device tool:  command "bash scripts/device_reproduce.sh", carry ["data/omniglot.tgz"], timeout_s 560
# Back here:    cp -r <files_at>/runs/. runs/ && cp <files_at>/models/* models/   then commit runs/ and models/
# A dry run of the cards on CPU (the stages already complete): OUT=/tmp/out DEVICE=cpu EPISODES=4 CURVE_STEPS=5 UNSURE_EPISODES=10 CONTRAST= ...
set -euo pipefail
: "${OUT:?set OUT to the folder whose files come back}"
cd "$(dirname "$0")/.."
mkdir -p data && tar xzf data/omniglot.tgz -C data
for folder in reproduce card_results; do  # the runs live in $OUT: what is saved comes back even if cut
    kept=$(mktemp -d)  # also when runs/$folder is already a link (a second run on the same machine)
    cp -rL "runs/$folder/." "$kept/" 2>/dev/null || true
    rm -rf "runs/$folder" && mkdir -p "$OUT/runs/$folder" && cp -r "$kept/." "$OUT/runs/$folder/"
    ln -s "$OUT/runs/$folder" "runs/$folder"
done
mkdir -p "$OUT/models"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
DEVICE=${DEVICE:-cuda}
DATA_ROOT=data DEVICE=$DEVICE bash scripts/reproduce_character_models.sh
tail -n 3 runs/reproduce/*.log | tr "\r" "\n" | grep -E "==>|^iter|^done" || true

card() {  # stage file, model name, default steps, default lr, then model_card.py's other arguments
    local stage=$1 name=$2 steps=$3 lr=$4
    shift 4
    echo "card $name ($(date +%T))"
    python scripts/model_card.py "runs/reproduce/$stage.pt" --suite omniglot --out "models/$name.pt" --data-root data \
        --steps "$steps" --inner-lr "$lr" --jobs 4 --episodes "${EPISODES:-600}" --curve-steps "${CURVE_STEPS:-50}" ${CONTRAST---contrast} \
        --command "bash scripts/reproduce_character_models.sh" "$@" &&
        cp "models/$name".* "$OUT/models/"  # && throughout: set -e is off inside a function called before ||
}
unsure() {  # model name, steps, lr: the "none of these" threshold (classify reads it from the card)
    python -m metacore unsure --checkpoint "models/$1.pt" --data-root data --dataset omniglot --split evaluation \
        --way 5 --shot 1 --query 5 --episodes "${UNSURE_EPISODES:-300}" --keep 0.97 --seed 0 --device "$DEVICE" --card "models/$1.json" &&
        python scripts/model_card.py "models/$1.pt" --suite omniglot --out "models/$1.pt" --steps "$2" --inner-lr "$3" \
        --data-root data --rerender &&
        cp "models/$1".* "$OUT/models/"
}
failed=()  # a card that fails does not stop the next; the run ends saying which failed
{ card stage4_metasgd omniglot_metasgd 5 0.001 && unsure omniglot_metasgd 5 0.001; } || failed+=(omniglot_metasgd)
{ card stage3_zero omniglot_conv4 5 0.001 && unsure omniglot_conv4 5 0.001; } || failed+=(omniglot_conv4)
card stage2_protomaml omniglot_protomaml 1 0.01 || failed+=(omniglot_protomaml)
if (( ${#failed[@]} )); then
    echo "FAILED: ${failed[*]} ($(date +%T)); what finished is under \$OUT"
    exit 1
fi
echo "all done ($(date +%T))"
