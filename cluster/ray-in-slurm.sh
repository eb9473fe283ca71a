#!/usr/bin/env bash
# Ray head + workers over a multi-node SLURM allocation, then a command on the head.
# NOT TESTED in lipsweep's CI (one machine, single-node SLURM); written after Ray's SLURM guide.
# lipsweep's own --backend slurm uses one node per cell job and starts Ray inside the job
# (lipsweep.backends.slurm.start_ray), so it does not need this script.
#
#   #SBATCH --nodes=4 --ntasks-per-node=1 --cpus-per-task=16 --gpus-per-node=4
#   srun is used below; run inside the allocation:
#   cluster/ray-in-slurm.sh lipsweep resume DIR --address "$RAY_ADDRESS"
#
# Ports come from the job id so jobs sharing nodes do not collide; Ray binds to each node's own
# address (never 0.0.0.0), the dashboard is off, and RAY_TMPDIR is short and per job.
set -euo pipefail
: "${SLURM_JOB_ID:?run inside a SLURM allocation}"
[ $# -ge 1 ] || { echo "usage: $0 COMMAND..." >&2; exit 2; }

nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head=${nodes[0]}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head" hostname --ip-address | awk '{print $1}')
port=$((20000 + SLURM_JOB_ID % 10000))
export RAY_TMPDIR=/tmp/r$SLURM_JOB_ID RAY_USAGE_STATS_ENABLED=0
export RAY_ADDRESS=$head_ip:$port
cpus=${SLURM_CPUS_PER_TASK:-1}
gpus=${SLURM_GPUS_PER_NODE:-0}
gpus=${gpus##*:}  # "a100:4" -> 4

srun --nodes=1 --ntasks=1 -w "$head" ray start --head --block --node-ip-address="$head_ip" \
  --port="$port" --num-cpus="$cpus" --num-gpus="$gpus" --include-dashboard=false \
  --temp-dir="$RAY_TMPDIR" --disable-usage-stats &
pids=($!)
sleep 10
for node in "${nodes[@]:1}"; do
  srun --nodes=1 --ntasks=1 -w "$node" bash -c \
    "ray start --block --address=$RAY_ADDRESS --node-ip-address=\$(hostname --ip-address | awk '{print \$1}') \
     --num-cpus=$cpus --num-gpus=$gpus --temp-dir=$RAY_TMPDIR --disable-usage-stats" &
  pids+=($!)
done
sleep 5
status=0
"$@" || status=$?
kill "${pids[@]}" 2> /dev/null || true  # the srun steps we started, by PID
wait || true
exit "$status"
