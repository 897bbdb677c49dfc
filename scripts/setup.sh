#!/usr/bin/env bash
# One-shot, idempotent set-up: system libraries (as root), a venv in .venv, torch first, GPAW with FFTW, matloop.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

# chromium: the headless browser the dashboard and report tests drive.
APT_PACKAGES="libxc-dev libopenblas-dev libfftw3-dev libopenmpi-dev openmpi-bin cp2k cp2k-data chromium"
missing=$(dpkg-query -W -f='${Package} ${Status}\n' $APT_PACKAGES 2>/dev/null | grep -vc 'install ok installed' || true)
if ! dpkg-query -W $APT_PACKAGES >/dev/null 2>&1 || [ "$missing" != "0" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "setup: installing system packages for GPAW, CP2K and the browser tests ($APT_PACKAGES)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $APT_PACKAGES >/dev/null
  else
    echo "setup: GPAW needs the system packages: $APT_PACKAGES" >&2
    echo "setup: run 'sudo apt-get install $APT_PACKAGES' (or your cluster's modules) and re-run; continuing without them" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip wheel setuptools
# torch first and pinned: any looser spec resolves to a multi-GB CUDA build.
$PIP install torch==2.13.0

if ! "$VENV/bin/python" -c "import gpaw" 2>/dev/null; then
  if [ -f /usr/include/fftw3.h ] && [ -f /usr/include/xc.h ]; then
    siteconfig=$(mktemp --suffix=.py)
    printf "fftw = True\nlibraries += ['fftw3']\n" > "$siteconfig"
    GPAW_CONFIG="$siteconfig" $PIP install "gpaw>=25.1" gpaw-data
    rm -f "$siteconfig"
  else
    echo "setup: libxc/FFTW headers not found, skipping GPAW (the gpaw oracle will report itself unavailable)" >&2
  fi
fi

$PIP install -e ".[dev]"
touch "$VENV/.installed"
echo "setup: done ($VENV)"
