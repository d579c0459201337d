#!/usr/bin/env bash
# One lent-GPU session in one command, from the repository root of a copy that carries .device/ (pack.py):
#   bash experiments/gpu/run.sh CONFIG... [grid.py options, e.g. --seeds 1]   (the configs pack.py packed)
# installs the carried wheels, rebuilds the prepared folders' datasets, runs the rows on the GPU
# (experiments/grid.py, no baselines) until a deadline, and packs results + logs into $OUT/results.tgz.
# Budget knobs (seconds from the start of this script): PEAPOD_DEADLINE_S (no job starts later, default 330),
# PEAPOD_HARD_DEADLINE_S (running jobs are killed, default 540: the results are packed even then, inside a
# 600 s command limit), PEAPOD_JOBS (parallel jobs, default 14).
set -u -o pipefail
if [ $# -eq 0 ]; then echo "usage: bash experiments/gpu/run.sh CONFIG... [grid.py options]" >&2; exit 2; fi
started=$(date +%s)
out=${OUT:-runs/gpu-out}
mkdir -p "$out"
if [ -d .device/wheels ]; then  # absent in a local dry run whose Python already has everything
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .device/wheels/*.whl || exit 1
fi
python3 -m pip list 2>/dev/null | grep -i -E "^(torch|pyarrow|fsspec|pandas|huggingface.hub|accelerate|tokenizers) "
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
python3 -c "import sys, torch, transformers, datasets, evaluate; print(sys.version.split()[0], torch.__version__, \
transformers.__version__, datasets.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" \
  || exit 1
mkdir -p prepared runs/logs
for folder in .device/prepared/*; do
  [ -e "prepared/$(basename "$folder")" ] || cp -r "$folder" prepared/
done
for folder in prepared/*; do
  [ -e "$folder/dataset" ] || python3 -c "from datasets_scripts import rebuild_dataset; \
rebuild_dataset('$folder', tokenizer='.device/shared/tokenizers/t5', num_proc=3)" > "runs/logs/rebuild-$(basename "$folder").log" 2>&1 &
done
wait
for folder in prepared/*; do
  [ -e "$folder/dataset/dataset_dict.json" ] || { echo "rebuilding $folder failed: runs/logs/rebuild-$(basename "$folder").log"; tail -5 "runs/logs/rebuild-$(basename "$folder").log"; exit 1; }
done
echo "datasets rebuilt after $(( $(date +%s) - started )) s"
elapsed=$(( $(date +%s) - started ))
python3 experiments/grid.py "$@" --jobs "${PEAPOD_JOBS:-14}" --deadline_s $(( ${PEAPOD_DEADLINE_S:-330} - elapsed )) \
  --hard_deadline_s $(( ${PEAPOD_HARD_DEADLINE_S:-540} - elapsed )) --baselines --shared_dir .device/shared 2>&1 \
  | tee "$out/grid.log"
status=$?
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
tar czf "$out/results.tgz" experiments/results runs/logs
echo "finished after $(( $(date +%s) - started )) s"
exit $status
