#!/usr/bin/env bash
# Debian packages two test modules use: chromium (the dashboard's browser test drives it with Playwright via
# executable_path=, since Playwright's own browser download is not reachable) and prometheus (its promtool checks
# /metrics). Installs what is missing when run as root where apt-get exists; otherwise says which tests skip.
# Idempotent: a second run only looks the commands up.
set -u
missing=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== apt-get install ${missing[*]} (for the dashboard's browser test and promtool)"
  log=$(mktemp)
  if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}") >"$log" 2>&1; then
    rm -f "$log"
    exit 0
  fi
  echo "apt-get failed; the tests that need ${missing[*]} will skip. Its last lines:"
  tail -5 "$log"
else
  echo "note: ${missing[*]} not installed (needs root and apt-get): the dashboard's browser test and/or the promtool check will skip"
fi
exit 0
