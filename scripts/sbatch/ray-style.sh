#!/bin/bash
# Manta under Slurm, route 2 (Ray's): `manta start` on each node through srun, then the driver.
#
#   sbatch scripts/sbatch/ray-style.sh                    # runs examples/quickstart
#   APP=./target/release/my_app MANTA=./target/release/manta sbatch scripts/sbatch/ray-style.sh
#
# The head runs on the allocation's first node; every other node joins it. The driver runs on
# the head's node with MANTA_ADDRESS/MANTA_TOKEN set, exactly as it would against any cluster.
#SBATCH --job-name=manta-ray-style
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --time=00:10:00
#SBATCH --output=manta-ray-style-%j.out
set -euo pipefail
APP="${APP:-./target/release/examples/quickstart}"
MANTA="${MANTA:-./target/release/manta}"
nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head="${nodes[0]}"
head_ip="$(getent ahostsv4 "$head" | awk 'NR == 1 { print $1 }')"
port=$((20000 + SLURM_JOB_ID % 30000))
# The token travels in the environment (srun passes it on), never in a command line.
MANTA_TOKEN="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export MANTA_TOKEN
export MANTA_SESSION_ROOT="${TMPDIR:-/tmp}/manta-$SLURM_JOB_ID"

srun --nodes=1 --ntasks=1 -w "$head" --overlap \
    "$MANTA" start --head --block --ip "$head_ip" --port "$port" &
until "$MANTA" status --address "$head_ip:$port" >/dev/null 2>&1; do
    sleep 0.1
done
if ((${#nodes[@]} > 1)); then
    srun --nodes=$((${#nodes[@]} - 1)) --ntasks-per-node=1 --exclude="$head" --overlap \
        "$MANTA" start --block --address "$head_ip:$port" &
fi
trap '"$MANTA" stop --address "$head_ip:$port" || true; wait' EXIT
MANTA_ADDRESS="$head_ip:$port" "$APP" "$@"
"$MANTA" status --address "$head_ip:$port"
