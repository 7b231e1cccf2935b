#!/usr/bin/env bash
# Install hpcsync and everything it needs on a Debian 12 machine (run as root).
#
#   ./install.sh            system packages + .venv (hpcsync, tests, docs) + .venv-crossbar
#   ./install.sh --no-apt   skip the system packages (they are installed already)
#
# Crossbar lives in its own venv: it pins old versions of shared libraries (idna) and
# brings a bjdata build that is noisy next to NumPy 2. .venv/bin/crossbar points at it.
set -euo pipefail
cd "$(dirname "$0")"

APT=1
for arg in "$@"; do
  case "$arg" in
    --no-apt) APT=0 ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
SYSTEM_PACKAGES=(
  # real services the agents drive and the test suite starts on loopback
  openssh-server openssh-client openssh-sftp-server rsync
  slurmctld slurmd slurmdbd slurm-client munge mariadb-server
  postgresql-15
  slapd ldap-utils
)

if [ "$APT" = 1 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install.sh: system packages need root; rerun as root or pass --no-apt" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  missing=()
  for p in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
if [ ! -x .venv-crossbar/bin/crossbar ]; then
  echo "==> crossbar venv"
  "$PY" -m venv .venv-crossbar
  .venv-crossbar/bin/pip install -q --upgrade pip
  .venv-crossbar/bin/pip install -q 'crossbar>=24'
  # bjdata's sdist builds against NumPy 1.x; rebuild it against the NumPy installed.
  .venv-crossbar/bin/pip install -q --no-build-isolation --no-deps --force-reinstall --no-cache-dir 'bjdata==0.6.6'
fi

echo "==> hpcsync venv"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[test,docs,bench]'
ln -sf "$(pwd)/.venv-crossbar/bin/crossbar" .venv/bin/crossbar
echo "==> installed: $(.venv/bin/hpcsync --version)"
