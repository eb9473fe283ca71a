#!/usr/bin/env bash
# A private single-node SLURM (Debian's slurm-wlm 22.05 + munge) on 127.0.0.1, for tests and for
# trying lipsweep's SLURM path on one machine. No systemd, no cgroups, no accounting database.
#
#   cluster/slurm-single-node.sh start DIR   # prints: export SLURM_CONF=DIR/slurm.conf
#   cluster/slurm-single-node.sh stop DIR    # stops the daemons by their PID files
#
# Everything (munge key and socket, slurm.conf, state, spool, logs, PID files) lives under DIR,
# with free ports, so several instances can run side by side. Run as root (jobs run as the
# submitting user). Needs: apt-get install -y --no-install-recommends slurm-wlm munge
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
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
SlurmdPort=$(free_port)
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
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
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
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
  slurmd -N localhost
  for _ in $(seq 60); do
    if sinfo -h -o %T 2> /dev/null | grep -q idle; then
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
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
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
