#!/usr/bin/env bash
# A real, one-node Slurm cluster on this machine, for the tests under tests/slurm/ (and for trying
# the job scripts in slurm/ by hand). Debian 12's Slurm 22.05, its PMIx plugin and munge.
#
#   scripts/slurm-cluster.sh install  install the packages (slurm-wlm, munge, libpmix-dev) only
#   scripts/slurm-cluster.sh start    install what is missing, configure, start; wait until idle
#   scripts/slurm-cluster.sh stop     stop slurmd, slurmctld and munged (the work dir is kept)
#   scripts/slurm-cluster.sh status   exit 0 when the cluster answers and the node is usable
#   scripts/slurm-cluster.sh env      print the line to eval to use it: export SLURM_CONF=...
#
# Then: eval "$(scripts/slurm-cluster.sh env)"; sbatch ...; squeue; sinfo.
#
# Everything lives in one work dir, $SPARSA_SLURM_DIR (default /tmp/sparsa-slurm): slurm.conf,
# the munge key and socket, state, spool, pid and log files. Nothing under /etc is touched, so a
# machine's own Slurm or munge (if any) is left alone; clients find this cluster through
# SLURM_CONF. Runs as root (the daemons and jobs all run as root: SlurmUser=root), without
# systemd (containers, CI): the daemons are started directly and find their way by pid files.
# `start` is idempotent: on a running, healthy cluster it does nothing.
#
# Ports: $SPARSA_SLURM_PORT (slurmctld, default 6817) and the next one (slurmd).
set -euo pipefail

DIR=${SPARSA_SLURM_DIR:-/tmp/sparsa-slurm}
CTLD_PORT=${SPARSA_SLURM_PORT:-6817}
SLURMD_PORT=$((CTLD_PORT + 1))
CONF=$DIR/slurm.conf
SOCK=$DIR/munge/munge.socket
NODE=$(hostname -s)
export SLURM_CONF=$CONF

# The packages the cluster needs. slurm-wlm pulls slurmctld, slurmd, slurm-client and
# slurm-wlm-basic-plugins (which holds mpi_pmix.so -> mpi_pmix_v4.so). That plugin dlopen()s the
# unversioned .../pmix2/lib/libpmix.so, which only libpmix-dev ships (libpmix2 has just the .so.2),
# so libpmix-dev is listed too (libopenmpi-dev also pulls it in).
PKGS=(slurm-wlm munge libpmix-dev)

log() { echo "[slurm-cluster] $*" >&2; }
die() { log "error: $*"; exit 1; }

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
  local missing=() p
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "installing ${missing[*]} needs root"
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # No recommends: slurm-wlm recommends every plugin package (MySQL, RRD, ...), none needed here.
  # Debian's maintainer scripts try to start the services; without systemd that is refused, which
  # is harmless: we start the daemons ourselves below.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Writes slurm.conf to $1 (and the munge key, once).
write_config() {
  local conf=$1
  mkdir -p "$DIR"/{munge,state,spool,log,run}
  # munged refuses a socket directory that others can write to (and warns when they cannot
  # reach it); the key must be private.
  chmod 755 "$DIR" "$DIR/munge"
  if [ ! -s "$DIR/munge/munge.key" ]; then
    mungekey --create --keyfile="$DIR/munge/munge.key" 2>/dev/null ||
      dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
  fi
  chmod 600 "$DIR/munge/munge.key"

  local cpus mem
  cpus=$(nproc)
  # The tests run 2-task jobs; on a 1-core machine say 2 CPUs anyway (config_overrides below
  # keeps slurmd from draining the node for the mismatch; the tasks simply share the core).
  [ "$cpus" -ge 2 ] || cpus=2
  # Leave some memory to the system so that a job's --mem request never exceeds what is free.
  mem=$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')

  cat >"$conf" <<EOF
# Written by scripts/slurm-cluster.sh: a one-node test cluster. Do not edit; rerun the script.
ClusterName=sparsa-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
# Our own munged (not the system's): its socket is in the work dir. cred_expire is also how long
# a requeued job waits before it may start again (default 120 s): 15 s keeps the requeue test short.
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK,cred_expire=15
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd-%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Containers have no usable cgroup hierarchy and no systemd: track processes through /proc and
# do no binding. Nothing else (accounting, job completion, energy) is wanted in a test cluster.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
# Jobs get cores, not the whole node, so array tasks run side by side.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Look at pending jobs every few seconds (defaults 60 s and 30 s): a requeued job becomes eligible
# cred_expire seconds after its requeue, with no event that would wake the scheduler then.
SchedulerParameters=sched_interval=3,bf_interval=3
# Jobs may be requeued (by themselves, before their time limit, or by hand).
JobRequeue=1
# Keep finished jobs visible to scontrol/squeue for a while (the tests read their state).
MinJobAge=600
# SIGTERM -> SIGKILL delay when a job ends (cancel, requeue, time limit): time enough for sparsa to
# reach its next safe point and write its journal.
KillWait=30
ReturnToService=2
# The node line states what we want, not what slurmd measures; do not drain on a mismatch.
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

cluster_answers() { timeout 10 sinfo -h >/dev/null 2>&1; }

# A start that failed: show why, stop what did start, exit non-zero.
start_failed() {
  show_logs
  stop_daemons quiet
  die "$*"
}

node_state() { timeout 10 sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -1; }

node_usable() {
  case "$(node_state)" in
    idle* | mixed* | allocated* | completing*) return 0 ;;
    *) return 1 ;;
  esac
}

show_logs() {
  local f
  for f in "$DIR"/log/munged.log "$DIR"/log/slurmctld.log "$DIR"/log/slurmd.log "$DIR"/log/*.out; do
    [ -s "$f" ] || continue
    log "---- last lines of $f"
    tail -n 25 "$f" >&2
  done
}

start() {
  [ "$(id -u)" -eq 0 ] || die "the test cluster runs its daemons as root; run as root"
  install_packages
  write_config "$CONF.new"
  if cmp -s "$CONF.new" "$CONF" && pid_alive "$DIR/run/slurmctld.pid" &&
    pid_alive "$DIR/run/slurmd.pid" && cluster_answers && node_usable; then
    rm -f "$CONF.new"
    log "already running (SLURM_CONF=$CONF)"
    return 0
  fi
  # A half-started cluster (one daemon died, a stale pid file) or a changed configuration: begin
  # again from a clean state.
  stop_daemons quiet
  mv "$CONF.new" "$CONF"

  # Each daemon runs in the foreground (-F / -D) under setsid, detached from the caller: its own
  # session (a test runner's kill of its process group leaves it alone), stdin from /dev/null and
  # output to a log file (nothing keeps the caller's pipes open after it exits, which would make
  # ctest or CI wait forever), and its own log file too for what it says before that is opened.
  # munged: --force accepts running as root.
  setsid munged -F --force --socket="$SOCK" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed" </dev/null >"$DIR/log/munged.out" 2>&1 &
  local i
  for i in $(seq 50); do [ -S "$SOCK" ] && break; sleep 0.2; done
  [ -S "$SOCK" ] || start_failed "munged did not start"
  munge -S "$SOCK" -n </dev/null | unmunge -S "$SOCK" >/dev/null ||
    start_failed "munge credentials do not round-trip"

  # -i: ignore state left by an earlier run (jobs of a previous test session are forgotten).
  # ($! is the daemon itself: setsid execs it, a background child not being a group leader.)
  setsid slurmctld -D -i -f "$CONF" </dev/null >"$DIR/log/slurmctld.out" 2>&1 &
  local ctld=$! t0=$SECONDS
  until cluster_answers; do
    kill -0 "$ctld" 2>/dev/null || start_failed "slurmctld exited"
    [ $((SECONDS - t0)) -lt 60 ] || start_failed "slurmctld does not answer after 60 s"
    sleep 0.5
  done
  setsid slurmd -D -f "$CONF" -N "$NODE" </dev/null >"$DIR/log/slurmd.out" 2>&1 &
  local slurmd=$!
  t0=$SECONDS
  i=0
  until node_usable; do
    kill -0 "$slurmd" 2>/dev/null || start_failed "slurmd exited"
    if [ $((SECONDS - t0)) -ge 60 ]; then
      sinfo -N -l >&2 || true
      start_failed "node $NODE is not idle after 60 s (state: $(node_state))"
    fi
    # A node left DOWN by an earlier run comes back with this (ReturnToService=2 covers the rest).
    i=$((i + 1))
    [ $((i % 10)) -ne 0 ] || scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
    sleep 0.5
  done
  log "running: node $NODE $(node_state), mpi plugins: $(srun --mpi=list 2>&1 | tr -s '\n ' ' ')"
  log "use it with: export SLURM_CONF=$CONF"
}

stop_daemons() {
  local name f pid i
  # Jobs would outlive slurmd (their slurmstepd processes are on their own): cancel them first.
  if pid_alive "$DIR/run/slurmctld.pid"; then
    timeout 10 scancel --quiet --user="$(id -un)" 2>/dev/null || true
  fi
  for name in slurmd slurmctld munged; do
    f=$DIR/run/$name.pid
    pid_alive "$f" || { rm -f "$f"; continue; }
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
    [ "${1:-}" = quiet ] || log "stopped $name ($pid)"
  done
  rm -f "$SOCK"
}

status() {
  # The pid files first: asking a controller that is not there takes sinfo ~10 s.
  if pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid" && cluster_answers &&
    node_usable; then
    sinfo
    return 0
  fi
  log "not running or node not usable (SLURM_CONF=$CONF)"
  return 1
}

case "${1:-}" in
  install) install_packages ;;
  start) start ;;
  stop) stop_daemons ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  logs) show_logs ;;
  *)
    echo "usage: $0 install|start|stop|status|env|logs" >&2
    exit 2
    ;;
esac
