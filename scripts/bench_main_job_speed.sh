#!/usr/bin/env bash
# The main job's training time at this commit against an earlier one, same machine, same data,
# runs taking turns (this machine is noisy): `bash scripts/bench_main_job_speed.sh ae82920 2`.
# Prints each run's stage lines and total; compare the "in N s" of the `done:` lines.
# Run on the 2-core CPU VM on 2026-12-01: docs/BENCHMARKS.md#main-job-speed.
set -euo pipefail
old=${1:?usage: bench_main_job_speed.sh OLD_REV [ROUNDS] [IMAGES]}
rounds=${2:-2}
images=${3:-1200}
root=$(git rev-parse --show-toplevel)
python=${PYTHON:-$root/.venv/bin/python}
scratch=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$scratch/old" >/dev/null 2>&1; rm -rf "$scratch"' EXIT
git -C "$root" worktree add -q "$scratch/old" "$old"
for round in $(seq "$rounds"); do
  for side in old new; do
    code=$root
    [ "$side" = old ] && code=$scratch/old
    echo "== round $round, $side ($(git -C "$code" rev-parse --short HEAD))"
    (cd "$code" && PYTHONPATH=$code "$python" -m trainer.task --synthetic_images="$images" \
      --output_dir="$scratch/run-$side-$round" 2>&1 | grep -E '^stage|^done')
  done
done
