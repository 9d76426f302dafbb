#!/usr/bin/env bash
# On a lent GPU machine (the device tool): finish the character models from nothing (scripts/
# reproduce_character_models.sh, resumed from the stages committed under runs/reproduce), then card them, the
# default first (scripts/models/card_character_models.sh). Everything is written under $OUT as it is made, so a run cut by
# its time limit still returns what it finished, and the next run (here or on CPU) goes on from there.
#
# Here, once:   mkdir -p data && tar czf data/omniglot.tgz -C ../shared/data omniglot-py
# Device tool:  command "bash scripts/models/device_reproduce.sh", carry ["data/omniglot.tgz"], timeout_s 560
# Back here:    cp -r <files_at>/runs/. runs/ && cp <files_at>/models/* models/   then commit runs/ and models/
# A dry run on CPU (the stages already complete): OUT=/tmp/out DEVICE=cpu EPISODES=4 CURVE_STEPS=5 UNSURE_EPISODES=10 CONTRAST= ...
set -euo pipefail
: "${OUT:?set OUT to the folder whose files come back}"
cd "$(dirname "$0")/../.."
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
DATA_ROOT=data DEVICE=$DEVICE bash scripts/models/reproduce_character_models.sh
tail -n 3 runs/reproduce/*.log | tr "\r" "\n" | grep -E "==>|^iter|^done" || true

DATA_ROOT=data DEVICE=$DEVICE JOBS=4 COPY_TO="$OUT/models" bash scripts/models/card_character_models.sh
echo "all done ($(date +%T))"
