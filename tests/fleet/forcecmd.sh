#!/bin/sh
# The OpenSSH side of the fleet comparison: sshd with `ForceCommand /path/forcecmd.sh LOGFILE` serving
# conchcmd's two read-only commands from SSH_ORIGINAL_COMMAND, in conchcmd's --json format (jq builds
# the JSON): `lastlog [--json]` (the last 10 lines of LOGFILE) and `comphash [--json] PATH` (sha256).
# Unlike conchcmd it confines comphash to no root and audits nothing: it is the cheapest honest anchor.
LOG="${1:?usage: forcecmd.sh LOGFILE}"
set -f  # the client's words are split on blanks but never globbed
# shellcheck disable=SC2086
set -- $SSH_ORIGINAL_COMMAND
command="${1:-}"
[ $# -gt 0 ] && shift
json=false
if [ "${1:-}" = --json ]; then json=true; shift; fi
case "$command" in
    lastlog)
        [ $# -eq 0 ] || { echo "usage: lastlog [--json]" >&2; exit 2; }
        if $json; then
            tail -n 10 -- "$LOG" | jq -cMRn --arg source "$LOG" '{source: $source, lines: [inputs]}'
        else
            tail -n 10 -- "$LOG"
        fi ;;
    comphash)
        [ $# -eq 1 ] || { echo "usage: comphash [--json] PATH" >&2; exit 2; }
        sum=$(sha256sum -- "$1") || exit 1
        if $json; then
            jq -cMn --arg path "$1" --arg digest "${sum%% *}" --argjson bytes "$(stat -c %s -- "$1")" \
                --arg opened "$(realpath -- "$1")" \
                '{path: $path, algorithm: "sha256", digest: $digest, bytes: $bytes, opened: $opened}'
        else
            printf '%s\n' "$sum"
        fi ;;
    "") echo "this account runs commands only" >&2; exit 1 ;;
    *) echo "Command not found." >&2; exit 127 ;;
esac
