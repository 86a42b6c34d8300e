#!/usr/bin/env bash
# One lent-GPU session in one command (device time is scarce; everything that belongs together
# runs here): the issue-14 GPU speed rows, then a training stage of the small prior model on
# the packed data (benchmarks/pack_training_data.py) for the time that is left.
#
#   BUDGET=540 DEVICE=cuda bash benchmarks/gpu/session.sh     (on the device machine, $OUT set)
#
# The run needs .whl/ (nibabel, monai, pydantic… for python 3.12) and gpu-data/ carried along.
# Training length: a 30-second calibration run measures steps/s, then the real run gets
# max_steps for the remaining time, so its cosine schedule ends when the time does.
set -u
T0=$(date +%s)
BUDGET=${BUDGET:-540}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/gpu-out}
DATA=${DATA:-gpu-data}
CONFIG=${CONFIG:-train-gpu-small}
mkdir -p "$OUT"
if [ -d .whl ] && ! python3 -c "import nibabel, monai, pydantic" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc;
  python3 -c "import torch, rtfsyn, monai, nibabel, pydantic; print('torch', torch.__version__,
'cuda', torch.cuda.is_available(), 'rtfsyn', rtfsyn.__version__)"; } 2>&1 | tee "$OUT/session.log"
python3 -c "import rtfsyn.training.trainer" || exit 4
elapsed() { echo $(( $(date +%s) - T0 )); }

# 1. speed (issue 14): the fast path and unet3d on the whole 240×240×155 volume
if [ "${SPEED:-1}" = 1 ]; then
  timeout 170 python3 benchmarks/synthesize_speed.py --device "$DEVICE" --rows rtfsyn,unet3d \
    --out "$OUT/synthesize_speed_$DEVICE.json" >> "$OUT/session.log" 2>&1
  echo "speed done at $(elapsed) s" | tee -a "$OUT/session.log"
fi

# 2. calibration: steps in 30 s of training loop
TRAIN=(python3 -m rtfsyn train --data "$DATA" --config "$CONFIG" --device "$DEVICE"
       ${HOLDOUT:+--holdout-site "$HOLDOUT"} --no-progress)
timeout 150 "${TRAIN[@]}" --out /tmp/calib --max-steps 100000 --max-minutes "${CALIB_MIN:-0.5}" \
  > "$OUT/calib.log" 2>&1
N=$(grep -o "at step [0-9]*" "$OUT/calib.log" | tail -1 | grep -o "[0-9]*")
[ -n "$N" ] || { echo "calibration failed"; tail -20 "$OUT/calib.log"; exit 5; }
CAL_S=$(python3 -c "print(round(${CALIB_MIN:-0.5}*60))")
REMAIN=$(( BUDGET - $(elapsed) - 50 ))
STEPS=$(( N * REMAIN * 9 / (CAL_S * 10) ))
echo "calibration: $N steps in $CAL_S s; $REMAIN s left -> --max-steps $STEPS" \
  | tee -a "$OUT/session.log"

# 3. the training stage
MINUTES=$(python3 -c "print(round(($REMAIN + 20) / 60, 2))")
timeout $(( REMAIN + 60 )) "${TRAIN[@]}" --out /tmp/run --max-steps "$STEPS" \
  --max-minutes "$MINUTES" ${INIT_FROM:+--init-from "$INIT_FROM"} > "$OUT/train.log" 2>&1
echo "training exit $? at $(elapsed) s" | tee -a "$OUT/session.log"
for f in final best; do
  [ -f /tmp/run/checkpoints/$f.safetensors ] && cp /tmp/run/checkpoints/$f.safetensors "$OUT/"
done
[ -f /tmp/run/checkpoints/final.safetensors ] \
  || cp /tmp/run/checkpoints/last.safetensors "$OUT/last.safetensors" 2>/dev/null
cp /tmp/run/metrics.jsonl "$OUT/" 2>/dev/null
ls -la "$OUT" | tee -a "$OUT/session.log"
