#!/bin/sh
# OpenSSH sshd as a restricted ops endpoint: sshd_config's `ForceCommand` runs this script, which
# dispatches on SSH_ORIGINAL_COMMAND (`ssh host comphash PATH`) or, with no command, reads
# commands line by line after a "> " prompt. The same commands conchcmd serves, the way an
# operator would script them: lastlog (the last 10 lines of $BENCH_LOG), comphash PATH (SHA-256),
# exit. tests/bench/compare.py runs it; it matches ../shared/bench/anchors/forcecmd.sh.
LOG="${BENCH_LOG:?}"
run() {
  set -- $1
  case "$1" in
    lastlog) tail -n 10 "$LOG" ;;
    comphash) [ $# -eq 2 ] || { echo "usage: comphash PATH" >&2; return 2; }; sha256sum -- "$2" ;;
    exit) return 255 ;;
    "") return 0 ;;
    *) echo "Command not found." >&2; return 127 ;;
  esac
}
if [ -n "$SSH_ORIGINAL_COMMAND" ]; then run "$SSH_ORIGINAL_COMMAND"; rc=$?; [ $rc = 255 ] && rc=0; exit $rc; fi
while printf '> ' && IFS= read -r line; do run "$line"; [ $? = 255 ] && exit 0; done
