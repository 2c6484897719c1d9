#!/bin/bash
# Queue a whole bids_qa run on SLURM: the participant array (one task per participant), then the
# group job with --dependency=afterok on the array. Prints the two job ids.
#
#   BIDS_DIR=/data/study OUT_DIR=/scratch/qa SIF=/containers/bids_qa.sif scripts/slurm/submit.sh [SBATCH OPTIONS...]
#
# SBATCH OPTIONS (e.g. --partition=short --account=lab) are given to both jobs. Environment:
#   MAX_PARALLEL   at most this many array tasks at once (default 50; the "%N" of --array)
#   PARTICIPANTS_FILE, BIDS_QA_ARGS, BIDS_QA_EXEC, WORK_ROOT, SINGULARITY, SIF: see bids_qa_array.sbatch
#   LOG_DIR        where SLURM writes the jobs' logs (default OUT_DIR/slurm_logs)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${BIDS_DIR:?set BIDS_DIR to the BIDS dataset}"
: "${OUT_DIR:?set OUT_DIR to the output folder}"
BIDS_DIR=$(cd "$BIDS_DIR" && pwd)
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
export BIDS_DIR OUT_DIR

if [ -n "${PARTICIPANTS_FILE:-}" ]; then
    n=$(grep -c -v '^[[:space:]]*$' "$PARTICIPANTS_FILE")
else
    n=$(find "$BIDS_DIR" -mindepth 1 -maxdepth 1 -type d -name 'sub-*' | wc -l)
fi
if [ "$n" -lt 1 ]; then
    echo "submit: no participants found in $BIDS_DIR" >&2
    exit 66
fi
log_dir=${LOG_DIR:-$OUT_DIR/slurm_logs}
mkdir -p "$log_dir"

array=$(sbatch --parsable --export=ALL --array=1-"$n"%"${MAX_PARALLEL:-50}" \
    --output="$log_dir/bids_qa_%A_%a.log" "$@" "$here/bids_qa_array.sbatch")
array=${array%%;*}
group=$(sbatch --parsable --export=ALL --dependency=afterok:"$array" --kill-on-invalid-dep=yes \
    --output="$log_dir/bids_qa_group_%j.log" "$@" "$here/bids_qa_group.sbatch")
group=${group%%;*}
echo "participant array: job $array ($n task(s)); group: job $group (after the array succeeds)"
echo "logs: $log_dir"
