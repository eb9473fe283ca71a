#!/usr/bin/env bash
# Ray over a SLURM allocation: the head on its first node, a worker on every other node, then
# COMMAND on this node with RAY_ADDRESS set; when COMMAND ends, the Ray steps are stopped (by
# the PIDs of the srun steps this script started) and its exit status is COMMAND's.
#
#   #SBATCH --nodes=4 --ntasks-per-node=1 --cpus-per-task=16 --gpus-per-node=4
#   cluster/ray-in-slurm.sh bash -c 'lipsweep launch --backend ray --address "$RAY_ADDRESS" ...'
#
# (single quotes: RAY_ADDRESS is set by this script, not by the shell that calls it). Run it in
# the batch script of the allocation (or under salloc); `ray` and `python3` are taken from PATH
# (override with RAY=..., PYTHON=...). lipsweep's own --backend slurm does not need this script:
# it runs one single-node job per cell with Ray local to the job (jobs/cell.py).
#
# Each node gives Ray the allocation's CPUs per task (SLURM_CPUS_PER_TASK, one task per node) and
# the GPUs SLURM lets it see (CUDA_VISIBLE_DEVICES). Ray advertises each node's own address: the
# head's is the first IPv4 address `hostname --ip-address` prints there (a loopback one is left
# to Ray, which takes the interface of its default route), a worker's the one it reaches the head
# from. The dashboard is off, the GCS port is a free port of the head, RAY_TMPDIR is short and
# per job and node (/tmp/r<jobid>n<i> on the allocation's i-th node, removed at the end), and the
# cluster only accepts clients holding a token made for this job (RAY_AUTH_MODE=token,
# RAY_AUTH_TOKEN; the steps and COMMAND inherit it from this script's environment).
#
# Binding: Ray 2.60's gRPC servers (GCS, raylets, workers) listen on 127.0.0.1 when the node's
# address is 127.0.0.1 and on every interface otherwise; Ray has no option to bind them to one
# given address, and a multi-node Ray refuses 127.0.0.1. So they listen on all interfaces of each
# node, and the per-job token is what keeps other users' clients out. (lipsweep's single-node
# jobs bind everything to 127.0.0.1: lipsweep/ray_local.py.)
#
# Tested (tests/test_slurm.py) in a two-node allocation of a SLURM on one machine (two slurmd
# daemons: cluster/slurm-single-node.sh start DIR 2): both Ray nodes join with their own CPUs, a
# sweep driven by `lipsweep launch --backend ray --address` runs its two trials on the two
# nodes, a client with a wrong token is refused, no dashboard port is open, the temp dirs are
# made and removed, and no Ray step outlives the stop (one did when the kill reached a wrapper
# subshell). Not tested: nodes on different machines (the address choice on a real network, the
# token crossing hosts), GPUs, several jobs sharing a node.
set -euo pipefail
: "${SLURM_JOB_ID:?run inside a SLURM allocation}"
[ $# -ge 1 ] || { echo "usage: $0 COMMAND..." >&2; exit 2; }
ray=${RAY:-ray}
python=${PYTHON:-python3}
# A multi-node Ray needs this on (Linux's default); a process running lipsweep's local Ray
# (lipsweep/ray_local.py) sets it to 0, and a job submitted from there would inherit that.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
on_node() {  # run a command on one node of the allocation, next to the Ray steps
  local node=$1
  shift
  srun --overlap --nodes=1 --ntasks=1 -w "$node" "$@"
}
# Short (Ray's socket paths are limited), and unlike a cell job's /tmp/r<jobid>_<pid>.
temp_dir() { echo "/tmp/r${SLURM_JOB_ID}n$1"; }

# On the head: its address, the first IPv4 address `hostname --ip-address` prints there, as in
# Ray's SLURM guide (a loopback one, as hosts files often map the hostname to 127.0.1.1, is left
# to Ray: the address of the interface its default route uses), and a free port on it.
read -r head_ip port < <(on_node "${nodes[0]}" "$python" -c '
import socket, subprocess
from ray.util import get_node_ip_address
printed = subprocess.run(["hostname", "--ip-address"], capture_output=True, text=True).stdout
ips = [a for a in printed.split() if a.count(".") == 3 and not a.startswith("127.")]
ip = ips[0] if ips else get_node_ip_address()
with socket.socket() as s:
    s.bind((ip, 0))
    print(ip, s.getsockname()[1])')
export RAY_ADDRESS=$head_ip:$port RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=token
RAY_AUTH_TOKEN=$("$python" -c 'import secrets; print(secrets.token_hex(32))')
export RAY_AUTH_TOKEN

# One Ray node per SLURM node, as a step that lives until it is stopped, with the GPUs SLURM lets
# it see. $1: the node's index, $2...: `ray start` options of its role. Workers find their own
# address: the one they reach the head from (Ray's default for `ray start --address`).
ray_node() {
  local index=$1 tmp
  shift
  tmp=$(temp_dir "$index")
  # srun itself in the background (not on_node: a function run with & is a subshell, and its
  # PID is the subshell's, whose death leaves srun and `ray start --block` running). srun
  # forwards the SIGTERM of stop_ray to its task, which stops the node's Ray processes.
  # shellcheck disable=SC2016 # expanded inside the step, on its node
  srun --overlap --nodes=1 --ntasks=1 -w "${nodes[$index]}" bash -c '
    gpus=$(printf %s "${CUDA_VISIBLE_DEVICES:-}" | tr "," "\n" | grep -c . || true)
    mkdir -p "$0"
    exec env RAY_TMPDIR="$0" "$1" start --block "${@:2}" --num-cpus="${SLURM_CPUS_PER_TASK:-1}" \
      --num-gpus="$gpus" --temp-dir="$0" --disable-usage-stats' "$tmp" "$ray" "$@" &
  pids+=($!)
}

# The job's numbered steps SLURM still runs (not its batch or extern step).
running_steps() {
  squeue --noheader --steps --jobs="$SLURM_JOB_ID" --format=%i 2> /dev/null | grep -E '\.[0-9]+$' || true
}
pids=()
stop_ray() {  # the srun steps started here, by their PIDs; then each node's temp dir
  local left waited=0
  if [ ${#pids[@]} -gt 0 ]; then
    kill "${pids[@]}" 2> /dev/null || true
    wait "${pids[@]}" 2> /dev/null || true
    # Stopped means SLURM runs none of the Ray steps any more (a killed wrapper whose srun and
    # `ray start --block` live on would leave them running): say so, or name the ones left.
    while left=$(running_steps) && [ -n "$left" ] && [ "$waited" -lt 30 ]; do
      sleep 1
      waited=$((waited + 1))
    done
    if [ -n "$left" ]; then
      echo "ray-in-slurm: warning: steps $(echo $left) still run $waited s after Ray was stopped" >&2
    else
      echo "ray-in-slurm: Ray stopped on ${#pids[@]} nodes, no step left"
    fi
  fi
  pids=()
  local index
  for index in "${!nodes[@]}"; do
    on_node "${nodes[$index]}" rm -rf "$(temp_dir "$index")" || true
  done
}
trap stop_ray EXIT

ray_node 0 --head --node-ip-address="$head_ip" --port="$port" --include-dashboard=false
for index in "${!nodes[@]}"; do
  [ "$index" -eq 0 ] || ray_node "$index" --address="$RAY_ADDRESS"
done
# Wait (up to RAY_NODES_TIMEOUT s) until every node has joined; fail if one does not.
"$python" - "${#nodes[@]}" "${RAY_NODES_TIMEOUT:-180}" << 'PY'
import os
import sys
import time

import ray

wanted, timeout = int(sys.argv[1]), float(sys.argv[2])
deadline = time.monotonic() + timeout
while True:
    try:
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        break
    except ConnectionError:
        if time.monotonic() > deadline:
            sys.exit(f"no Ray head at {os.environ['RAY_ADDRESS']} after {timeout:.0f} s")
        time.sleep(1)
while (alive := sum(node["Alive"] for node in ray.nodes())) < wanted:
    if time.monotonic() > deadline:
        sys.exit(f"{alive} of {wanted} Ray nodes joined in {timeout:.0f} s")
    time.sleep(1)
print(f"ray-in-slurm: {alive} Ray nodes at {os.environ['RAY_ADDRESS']}", flush=True)
PY

status=0
"$@" || status=$?
exit "$status"
