#!/bin/bash
# Manta under Slurm, route 1 (SPMD): every task runs the same binary; Manta brings itself up.
# Rank 0 becomes the head (GCS) and the driver, every other rank a node and its worker; the
# address and token come from the job's own environment (no ports to pick, no sleeps).
#
#   sbatch scripts/sbatch/spmd.sh                         # runs examples/quickstart
#   APP=./target/release/my_app sbatch scripts/sbatch/spmd.sh
#
# One task per node is Manta's natural shape (a worker is multi-threaded); several tasks per
# node split the node's CPUs between them.
#SBATCH --job-name=manta-spmd
#SBATCH --nodes=1
#SBATCH --ntasks=3
#SBATCH --time=00:10:00
#SBATCH --output=manta-spmd-%j.out
set -euo pipefail
APP="${APP:-./target/release/examples/quickstart}"
srun --kill-on-bad-exit=1 "$APP" "$@"
