#!/bin/sh
# Create deploy/docker/secrets/ with fresh random passwords (never a default): run once per install.
#   sh deploy/docker/make-secrets.sh && docker-compose -f deploy/docker/compose.yaml up -d
# The folder is 0700 (only you on the host); the files are 0444 so the non-root users inside the
# containers can read their bind-mounted copies. Existing files are kept (re-running is safe).
set -eu
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
chmod 0700 secrets
rand() { openssl rand -hex 24; }
write() {  # write NAME CONTENT, unless NAME exists
  if [ ! -e "secrets/$1" ]; then
    printf '%s\n' "$2" > "secrets/$1"
    chmod 0444 "secrets/$1"
    echo "created secrets/$1"
  fi
}
[ -e secrets/postgres_password ] || write postgres_password "$(rand)"
[ -e secrets/redis_password ] || write redis_password "$(rand)"
pg=$(cat secrets/postgres_password)
redis=$(cat secrets/redis_password)
write ledger_url "postgresql+psycopg://alnnode:${pg}@postgres:5432/alnnode"
write broker_url "redis://:${redis}@redis:6379/0"
write redis.conf "requirepass ${redis}"
write orthanc.json "{\"AuthenticationEnabled\": true, \"RegisteredUsers\": {\"alnnode\": \"$(rand)\"}}"
