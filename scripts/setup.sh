#!/usr/bin/env bash
# Set up everything geneve needs on a fresh Debian machine (run as root): system tools for the
# namespace tests and the demo, then a virtualenv in .venv with geneve and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v ip >/dev/null || need_apt+=(iproute2)
command -v ping >/dev/null || need_apt+=(iputils-ping)
command -v nc >/dev/null || need_apt+=(netcat-openbsd)
command -v gcc >/dev/null || need_apt+=(gcc)
command -v tshark >/dev/null || need_apt+=(tshark)
command -v python3 >/dev/null || need_apt+=(python3 python3-dev python3-venv)
if command -v python3 >/dev/null; then
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
  # The C modules compile against Python.h: without it geneve falls back to pure Python.
  python3 -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || need_apt+=(python3-dev)
fi
command -v setpriv >/dev/null || need_apt+=(util-linux)
# systemd-analyze verifies the shipped unit (deploy/systemd/).
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
# Real clients for the inspection parsers' tests (tests/test_inspect.py).
command -v openssl >/dev/null || need_apt+=(openssl)
command -v curl >/dev/null || need_apt+=(curl)
command -v dig >/dev/null || need_apt+=(bind9-dnsutils)
# The tun bridge's live tests (tests/test_tun_live.py): an nftables filter, and iptables for
# the MASQUERADE of gwlbtun's own NAT example hook.
command -v nft >/dev/null || need_apt+=(nftables)
command -v iptables >/dev/null || need_apt+=(iptables)
# The fuzz targets (scripts/fuzz.sh): clang, and its sanitizer and libFuzzer runtime, which is
# only a recommendation of clang on Debian 12.
command -v clang >/dev/null || need_apt+=(clang)
dpkg -s libclang-rt-14-dev >/dev/null 2>&1 || need_apt+=(libclang-rt-14-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test,bench]'
.venv/bin/python -c 'import geneve.checksum as c; print("setup: geneve installed, checksum implementation:", c.IMPLEMENTATION)'
