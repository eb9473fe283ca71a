#!/usr/bin/env bash
# A private SLURM on one machine (Debian's slurm-wlm 22.05 + munge) on 127.0.0.1, for tests and for
# trying lipsweep's SLURM path on one machine. No systemd, no cgroups, no accounting database.
#
#   cluster/slurm-single-node.sh start DIR      # one node, "localhost"
#   cluster/slurm-single-node.sh start DIR 2    # two nodes n1, n2: one slurmd each, own ports
#   cluster/slurm-single-node.sh stop DIR       # stops the daemons by their PID files
#
# start prints: export SLURM_CONF=DIR/slurm.conf. Everything (munge key and socket, slurm.conf,
# state, spool, logs, PID files) lives under DIR, with free ports, so several instances can run
# side by side. Several nodes are several slurmd daemons on this machine (Debian's build has
# multiple-slurmd support: `scontrol show config` says MULTIPLE_SLURMD = Yes); each node
# declares all of this machine's CPUs, so jobs on different nodes share them. Run as root (jobs
# run as the submitting user). Needs: apt-get install -y --no-install-recommends slurm-wlm munge
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR [NODES]" >&2; exit 2; }
[ $# -eq 2 ] || [ $# -eq 3 ] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
count=${3:-1}
[[ $count =~ ^[1-9][0-9]?$ ]] || usage
if [ "$count" -eq 1 ]; then names=(localhost); else names=($(seq -f 'n%g' 1 "$count")); fi
# munged needs every folder above its socket searchable by all
[ "$1" = start ] && chmod a+x "$dir"

free_port() {  # a TCP port nobody listens on now (the kernel picks it)
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

write_conf() {  # slurm.conf for this machine: its CPU count and memory
  local cpus memory per_cpu
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys OMP_NUM_THREADS
  memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  per_cpu=$((memory / cpus < 2000 ? memory / cpus : 2000))
  cat > "$dir/slurm.conf" <<CONF
ClusterName=lipsweep
SlurmctldHost=localhost(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$(free_port)
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$per_cpu
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
KillWait=5
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
CONF
  local name
  for name in "${names[@]}"; do  # one slurmd per node, each on its own port
    echo "NodeName=$name NodeHostname=localhost NodeAddr=127.0.0.1 Port=$(free_port) CPUs=$cpus RealMemory=$memory State=UNKNOWN"
  done >> "$dir/slurm.conf"
  local all
  all=$(IFS=,; echo "${names[*]}")
  echo "PartitionName=debug Nodes=$all Default=YES MaxTime=INFINITE State=UP" >> "$dir/slurm.conf"
}

start() {
  command -v slurmctld > /dev/null && command -v munged > /dev/null || {
    echo "slurmctld/munged not found: apt-get install -y --no-install-recommends slurm-wlm munge" >&2
    exit 1
  }
  mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
  chmod 0755 "$dir/munge"
  [ -f "$dir/munge/munge.key" ] || mungekey --create --keyfile="$dir/munge/munge.key"
  chmod 0600 "$dir/munge/munge.key"
  munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/munged.seed"
  write_conf
  export SLURM_CONF=$dir/slurm.conf
  slurmctld -i
  local name
  for name in "${names[@]}"; do
    mkdir -p "$dir/spool/$name"
    slurmd -N "$name"
  done
  for _ in $(seq 60); do
    if [ "$(sinfo -h -N -t idle -o %N 2> /dev/null | sort -u | wc -l)" -eq "$count" ]; then
      echo "export SLURM_CONF=$SLURM_CONF"
      return 0
    fi
    sleep 0.5
  done
  echo "SLURM did not come up: see $dir/log/" >&2
  stop
  exit 1
}

stop() {  # by PID, never by name
  local pidfile pid
  for pidfile in "$dir"/slurmd-*.pid "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill "$pid" 2> /dev/null; then
      for _ in $(seq 40); do kill -0 "$pid" 2> /dev/null || break; sleep 0.25; done
    fi
    rm -f "$pidfile"
  done
}

case $action in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
