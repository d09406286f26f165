#!/bin/sh
# Create a secrets folder with fresh random passwords (never a default): run once per install.
#   sh deploy/docker/make-secrets.sh                                     # deploy/docker/secrets (compose)
#   sh deploy/docker/make-secrets.sh deploy/k8s/overlays/demo/secrets    # the Kubernetes demo overlay
# The folder is 0700 (only you on the host); the files are 0444 so the non-root users inside the
# containers can read their bind-mounted copies. Existing files are kept (re-running is safe).
set -eu
out=${1:-$(dirname "$0")/secrets}
umask 077
mkdir -p "$out"
chmod 0700 "$out"
cd "$out"
rand() { openssl rand -hex 24; }
write() {  # write NAME CONTENT, unless NAME exists
  if [ ! -e "$1" ]; then
    printf '%s' "$2" > "$1"   # no trailing newline: Kubernetes passes a Secret's bytes as they are
    chmod 0444 "$1"
    echo "created $out/$1"
  fi
}
write postgres_password "$(rand)"
write redis_password "$(rand)"
pg=$(cat postgres_password)
redis=$(cat redis_password)
write ledger_url "postgresql+psycopg://alnnode:${pg}@postgres:5432/alnnode"
write broker_url "redis://:${redis}@redis:6379/0"
write redis.conf "requirepass ${redis}"
write orthanc.json "{\"AuthenticationEnabled\": true, \"RegisteredUsers\": {\"alnnode\": \"$(rand)\"}}"
