# Sourced by the scripts: make sure .venv exists with the project installed.
# It installs requirements/dev.txt (every extra, exact versions and hashes, made by scripts/lock
# from pyproject.toml: the versions the images ship), then the project itself, editable, with
# no dependencies of its own. The dev extra holds the test tools and grpcurl, which the
# README's examples use. Reinstalls only when the lock or pyproject.toml changed since the last install.
ensure_venv() {
  local python="${PYTHON:-python3}" lock="requirements/dev.txt"
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: Python 3.11 or newer is needed as '$python' (set PYTHON=...)" >&2
    return 1
  fi
  local stamp=".venv/.installed-$(cat "$lock" pyproject.toml | sha256sum | cut -c1-16)"
  if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $("$python" --version)" >&2
    "$python" -m venv .venv
  fi
  if [ ! -f "$stamp" ]; then
    echo "installing $lock and the project (editable) into .venv" >&2
    if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip \
           && .venv/bin/python -m pip install --disable-pip-version-check --require-hashes --requirement "$lock" \
           && .venv/bin/python -m pip install --disable-pip-version-check --no-deps --editable .; } >.venv/install.log 2>&1; then
      tail -n 30 .venv/install.log >&2
      echo "error: installing $lock failed; the whole log is in .venv/install.log" >&2
      return 1
    fi
    rm -f .venv/.installed-*
    touch "$stamp"
  fi
}

# The embedded dev mode: with no JWT key configured, use (and on first use make) a random
# local secret in var/dev-jwt-secret, so that the services and mint_token agree.
use_dev_jwt_secret_unless_configured() {
  local name
  for name in $(compgen -v | grep -E '^((INVENTORY|CRM|CRM_INVENTORY)_)?JWT_(SECRET|PUBLIC_KEY|PRIVATE_KEY)(_FILE)?$'); do
    [ -n "${!name:-}" ] && return 0
  done
  if [ ! -s var/dev-jwt-secret ]; then
    mkdir -p var
    (umask 077 && .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(48))' > var/dev-jwt-secret)
    echo "generated a local dev JWT secret in var/dev-jwt-secret (dev only: configure a real key in production)" >&2
  fi
  export JWT_SECRET_FILE="$PWD/var/dev-jwt-secret"
}
