#!/usr/bin/env bash
# The long planted-variant schedule of README "Planted `user` variant": a 900-step row of `experiments/curves.py`
# (runs/curves/curves-synthetic-VARIANT-900/ROW) trained on from its final weights with a fresh AdamW each time:
# +900 and +1,800 steps at the constant rate (lr 5e-3 after 15 warmup steps), then a 1,200-step linear cooldown to 0;
# 4,800 steps in all, batch 32, one torch thread, seed 0 (or $SEED: pass the same seed the 900-step row was trained
# with; a nonzero seed adds -seedN to the stage folders).
#
#     bash experiments/user_chain.sh peapod-mlp             # or pod (peapod-mha was run by the same commands)
#     bash experiments/user_chain.sh peapod-mha history     # another planted variant (default: user)
#     bash experiments/user_chain.sh peapod-mha-qk neighbors runs/curves/curves-synthetic-neighbors-qk-900/peapod-mha-qk
#                                                           # the 900-step row from another curves.py --output folder
#     SEED=1 bash experiments/user_chain.sh peapod-mha user runs/curves/curves-synthetic-user-900-seed1/peapod-mha
#
# Checkpoints go to runs/curves/VARIANT-ROW[-seedN]-{continued,continued-2,cooldown-long}; a stage whose folder already holds
# a model is kept, not retrained. Evaluate them with `python experiments/curves.py --evaluate_run ...` and join them
# with `--join` (README has both commands).
set -euo pipefail
usage() { echo "user_chain.sh: error: $1 (usage: bash experiments/user_chain.sh ROW [VARIANT [FIRST_RUN]])" >&2; exit 2; }
[[ $# -ge 1 && $# -le 3 ]] || usage "expected a row name and optionally a planted variant and the 900-step run"
SEED=${SEED:-0}
[[ $SEED =~ ^[0-9]+$ ]] || usage "SEED must be a non-negative integer, got '$SEED'"
ROW=$1
VARIANT=${2:-user}
cd "$(dirname "$0")/.."
FIRST=${3:-runs/curves/curves-synthetic-$VARIANT-900/$ROW}
[[ -f $FIRST/model.safetensors ]] ||
  usage "no 900-step row $FIRST (train it with experiments/curves.py first)"
[[ -d prepared/synthetic-$VARIANT-pmf512-n20 ]] || usage "no prepared folder prepared/synthetic-$VARIANT-pmf512-n20"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON=(--prepared_dir "prepared/synthetic-$VARIANT-pmf512-n20" --tokenizer ../shared/tokenizers/t5 --tasks sequential topn
        --per_device_train_batch_size 32 --learning_rate 0.005 --eval_strategy no --save_strategy steps --seed "$SEED")
SUFFIX=$([[ $SEED == 0 ]] || echo "-seed$SEED")
previous=$FIRST
for stage in "continued 900 15 constant_with_warmup 900" "continued-2 1800 15 constant_with_warmup 900" \
             "cooldown-long 1200 0 linear 600"; do
  read -r name steps warmup schedule save <<< "$stage"
  folder=runs/curves/$VARIANT-$ROW$SUFFIX-$name
  if [[ ! -f $folder/model.safetensors ]]; then
    peapod-train "${COMMON[@]}" --output_dir "$folder" --base_model "$previous" --max_steps "$steps" \
      --warmup_steps "$warmup" --lr_scheduler_type "$schedule" --save_steps "$save"
  fi
  previous=$folder
done
