#!/bin/sh
# Entrypoint guard of the compose services: runs "$@" only if no secret named in
# $REQUIRED_SECRETS still holds a placeholder (.env.example's change-me) or is short. Compose's
# ${VAR:?} refuses only empty values.
for name in $REQUIRED_SECRETS; do
  eval "value=\${$name-}"
  case "$value" in
    change-me|changeme|password|secret)
      echo "refusing to start: $name in .env is the placeholder '$value'; set a real secret, e.g. python3 -c 'import secrets; print(secrets.token_hex(24))'" >&2
      exit 1 ;;
  esac
  if [ "${#value}" -lt 12 ]; then
    echo "refusing to start: $name in .env has ${#value} characters; use 12 or more, e.g. python3 -c 'import secrets; print(secrets.token_hex(24))'" >&2
    exit 1
  fi
done
exec "$@"
