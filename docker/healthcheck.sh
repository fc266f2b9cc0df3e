#!/bin/sh
# The image's HEALTHCHECK. In a container running the server: the standard gRPC health check
# (python -m server.healthcheck; FEDTL_HEALTH_* variables configure it, e.g. TLS). Other roles
# (clients, data preparation) listen on no port: they are healthy while they run.
for cmdline in /proc/[0-9]*/cmdline; do
  case " $(tr '\0' ' ' < "$cmdline" 2>/dev/null)" in
    *" -m server "*) exec python -m server.healthcheck "$@" ;;
  esac
done
exit 0
