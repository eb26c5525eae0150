#!/bin/sh
# keep.sh RUN_DIR: copy what `lscape reproduce ... --resume` needs of an intrinsic-dimension run folder into
# this folder: config.json and the finished chunks, checkpoints/*.npz (the study files <network>.npz, one
# row of scores and per-epoch test accuracies per finished (d, seed) run, and <network>_baseline_history.npz,
# the full-space runs' curves).  No model weights: a run is redone from its seed, never continued mid-way.
set -eu
run=${1:?usage: keep.sh RUN_DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$here/checkpoints"
cp "$run/config.json" "$here/config.json"
# the study files first: a baseline curve newer than its study file is harmless (that run is redone on
# resume and its curve rewritten); the reverse order could keep a run without its curve
for f in "$run"/checkpoints/fc.npz "$run"/checkpoints/lenet.npz "$run"/checkpoints/*_baseline_history.npz; do
    if [ -f "$f" ]; then cp "$f" "$here/checkpoints/"; fi
done
ls -l "$here/config.json" "$here"/checkpoints/*.npz
