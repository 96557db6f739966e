#!/usr/bin/env bash
# keepalived (vrrp_script) / load-balancer check for a Tandem node: exits 0 when the node can take
# what is asked (`writes` by default, or `reads`), 1 otherwise (including when it does not answer).
#
#   tandem-healthz-check.sh [writes|reads] [HOST:PORT]
#
# The address defaults to $TANDEM_API, then 127.0.0.1:7400. /healthz needs no token.
set -u
need="${1:-writes}"
api="${2:-${TANDEM_API:-127.0.0.1:7400}}"
case "$need" in
    writes | reads) ;;
    *)
        echo "usage: $0 [writes|reads] [HOST:PORT]" >&2
        exit 2
        ;;
esac
# -f: an HTTP 503 (the node cannot take it) is a failure; -m: a hung node fails within 2 s.
if curl -fsS -m 2 -o /dev/null "http://${api}/healthz?need=${need}"; then
    exit 0
fi
exit 1
