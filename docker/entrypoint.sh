#!/bin/sh
# Entry point of the fedtl image: the first word of the command picks the program.
#   server ...        python -m server ...          (the coordinator)
#   client ...        python -m client ...          (a participant)
#   prepare-data ...  python -m scripts.prepare_data ...   (fill the data volume once)
#   certs ...         python -m server.certs ...    (development CA, certificates and token)
#   healthcheck ...   python -m server.healthcheck ...     (standard gRPC health check)
#   submit | ls | logs | stop ...   an operator's jobs on a standing coordinator (docs/jobs.md)
# Anything else runs as given (e.g. `sh`, `python`).
set -e
case "$1" in
  server | client) program=$1 ;;
  prepare-data) program=scripts.prepare_data ;;
  certs) program=server.certs ;;
  healthcheck) program=server.healthcheck ;;
  submit | ls | logs | stop) exec python -m fedtl.cli "$@" ;;
  *) exec "$@" ;;
esac
shift
exec python -m "$program" "$@"
