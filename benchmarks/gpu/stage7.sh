#!/usr/bin/env bash
# GPU stage 7 (RECIPE.md): the bundled model continued twice on the same data for the same
# time, once with the real cases' target metadata filled as synthesis fills it and once with
# it left to the null tokens, to measure what the filling does (validation: real-val).
#   BUDGET_EACH=250 bash benchmarks/gpu/stage7.sh          (on the device machine, $OUT set)
set -u
EACH=${BUDGET_EACH:-250}
ROOT_OUT=${OUT:-/tmp/gpu-out}
sed 's/^fill_target_metadata: true/fill_target_metadata: false/' \
  benchmarks/gpu/train-gpu-v1cont.yaml > /tmp/train-gpu-v1cont-nofill.yaml
for variant in fill nofill; do
  cfg=benchmarks/gpu/train-gpu-v1cont.yaml
  [ "$variant" = nofill ] && cfg=/tmp/train-gpu-v1cont-nofill.yaml
  rm -rf /tmp/calib /tmp/run
  OUT=$ROOT_OUT/$variant BUDGET=$EACH SPEED=0 DEVICE=cuda DATA=benchmarks/work/packed-v2 \
    CONFIG=$cfg INIT_FROM=rtfsyn-default CALIB_MIN=0.25 bash benchmarks/gpu/session.sh
done
