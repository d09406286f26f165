#!/bin/sh
# aln-node container entry point: secrets from files, then the command.
# NAME_FILE=/run/secrets/x sets NAME to the contents of x (trailing newline dropped) for the
# ALNNODE_* settings (e.g. ALNNODE_STORAGE__LEDGER_URL_FILE) -- the convention of the official
# postgres and redis images -- so no secret is written in compose.yaml, a manifest or `docker inspect`.
set -eu
for name in $(env | sed -n 's/^\(ALNNODE_[A-Za-z0-9_]*\)_FILE=.*/\1/p'); do
  file=$(printenv "${name}_FILE")
  if [ ! -r "$file" ]; then
    echo "alnnode-entrypoint: ${name}_FILE=$file is not a readable file" >&2
    exit 2
  fi
  value=$(cat "$file")
  export "$name=$value"
  unset "${name}_FILE"
done
exec "$@"
