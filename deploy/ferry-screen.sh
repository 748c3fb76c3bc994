#!/usr/bin/env bash
# Runs a Ferry agent for one site in a detached tmux (or screen) session, for sites without
# systemd. See docs/operations.md.
#
#   ferry-screen.sh start  SITE   start the agent in session "ferry-SITE" (no-op if running)
#   ferry-screen.sh stop   SITE   SIGTERM the agent, wait for it to finish its copies
#   ferry-screen.sh status SITE   running or not (exit 0 / 3), pid, last log lines
#   ferry-screen.sh attach SITE   attach to the session (detach: C-b d in tmux, C-a d in screen)
#   ferry-screen.sh logs   SITE   follow the log file
#
# Settings (environment):
#   FERRY_BIN        the ferry binary            [ferry on PATH]
#   FERRY_ENV_FILE   KEY=value lines with secrets and settings (FERRY_CONFIG, FERRY_CATALOG,
#                    FERRY_CATALOG_PASSWORD, ...), read when the agent starts
#                    [~/.config/ferry/ferry.env if it exists]
#   FERRY_MUX        tmux or screen              [tmux if installed, else screen]
#   FERRY_STATE_DIR  lock files and logs         [${XDG_STATE_HOME:-~/.local/state}/ferry]
#   FERRY_STOP_WAIT  seconds `stop` waits        [330: longer than the agent's 300 s grace]
#
# Like the systemd unit, the session restarts the agent after exit codes 1 (some work
# failed) and 3 (catalogue unreachable), after 30 s; it ends on 0 (stopped), 2 (bad site
# map or flags) and 4 (another agent holds the lock).
set -euo pipefail

usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

die() {
  echo "ferry-screen: $*" >&2
  exit 1
}

[ $# -eq 2 ] || usage
action=$1
site=$2
case $site in
  "" | -* | *[!A-Za-z0-9._-]*) die "bad site name: '$site'" ;;
esac

ferry_bin=${FERRY_BIN:-ferry}
env_file=${FERRY_ENV_FILE:-$HOME/.config/ferry/ferry.env}
state_dir=${FERRY_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/ferry}
export FERRY_STATE_DIR=$state_dir
stop_wait=${FERRY_STOP_WAIT:-330}
session="ferry-$site"
lock_file="$state_dir/ferry-$site.lock"
log_file="$state_dir/ferry-$site.log"

if [ -n "${FERRY_MUX:-}" ]; then
  mux=$FERRY_MUX
elif command -v tmux > /dev/null; then
  mux=tmux
else
  mux=screen
fi
case $mux in
  tmux | screen) command -v "$mux" > /dev/null || die "$mux is not installed" ;;
  *) die "FERRY_MUX must be tmux or screen, not '$mux'" ;;
esac

session_exists() {
  if [ "$mux" = tmux ]; then
    tmux has-session -t "=$session" 2> /dev/null
  else
    screen -ls "$session" 2> /dev/null | grep -q "[0-9]\.${session}[[:space:]]"
  fi
}

# The pid in the site's lock file, if that process is alive.
agent_pid() {
  local pid
  [ -r "$lock_file" ] || return 1
  pid=$(tr -dc '0-9' < "$lock_file")
  [ -n "$pid" ] && kill -0 "$pid" 2> /dev/null && echo "$pid"
}

# Inside the session: load the environment file, run the agent, restart it like systemd's
# Restart=on-failure would.
run_agent() {
  if [ -f "$env_file" ]; then
    set -a
    # shellcheck source=/dev/null
    . "$env_file"
    set +a
  fi
  local code
  while true; do
    code=0
    "$ferry_bin" --host "$site" --log-file "$log_file" || code=$?
    echo "$(date -u +%FT%TZ) ferry agent for $site exited with code $code" | tee -a "$log_file"
    case $code in
      1 | 3) echo "restarting in 30 s (Ctrl-C to give up)"; sleep 30 ;;
      *) break ;;
    esac
  done
  # Leave the last words on screen for a moment when someone is attached.
  sleep 5
  return "$code"
}

case $action in
  start)
    if session_exists; then
      echo "$session is already running (pid $(agent_pid || echo '?'))"
      exit 0
    fi
    command -v "$ferry_bin" > /dev/null || die "ferry binary not found: $ferry_bin (set FERRY_BIN)"
    mkdir -p "$state_dir"
    self=$(readlink -f "$0")
    if [ "$mux" = tmux ]; then
      tmux new-session -d -s "$session" -- "$self" run "$site"
    else
      screen -dmS "$session" "$self" run "$site"
    fi
    echo "started $session ($mux); log: $log_file"
    ;;
  run)
    run_agent
    ;;
  stop)
    if pid=$(agent_pid); then
      echo "sending SIGTERM to the agent (pid $pid); running copies may finish first"
      kill -TERM "$pid"
      waited=0
      while kill -0 "$pid" 2> /dev/null; do
        if [ "$waited" -ge "$stop_wait" ]; then
          die "agent pid $pid still running after ${stop_wait}s; it is left alone"
        fi
        sleep 1
        waited=$((waited + 1))
      done
      echo "agent stopped after ${waited}s"
    else
      echo "no agent running for $site"
    fi
    if session_exists; then
      if [ "$mux" = tmux ]; then
        tmux kill-session -t "=$session"
      else
        screen -S "$session" -X quit
      fi
    fi
    ;;
  status)
    if pid=$(agent_pid); then
      echo "$session: running, pid $pid ($mux session: $(session_exists && echo yes || echo no))"
      code=0
    else
      echo "$session: not running"
      code=3
    fi
    if [ -f "$log_file" ]; then
      echo "--- last lines of $log_file"
      tail -n 10 "$log_file"
    fi
    exit "$code"
    ;;
  attach)
    session_exists || die "$session is not running"
    if [ "$mux" = tmux ]; then
      exec tmux attach-session -t "=$session"
    else
      exec screen -r "$session"
    fi
    ;;
  logs)
    [ -f "$log_file" ] || die "no log file yet: $log_file"
    exec tail -n 50 -F "$log_file"
    ;;
  *)
    usage
    ;;
esac
