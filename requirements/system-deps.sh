#!/usr/bin/env bash
# System packages and real test data that pip cannot provide (Debian):
# - chromium: the demo's browser test drives it with Playwright (which cannot download browsers here);
# - espeak-ng: synthetic speech for the speech-recognition fine-tuning corpus (`corpus:espeak-speech`);
# - pocketsphinx-testdata: real recorded speech with transcripts, for the speech-recognition quality tests.
# Idempotent; needs root (or sudo) only for what is missing.
set -euo pipefail
DATA_DIR="${HFPIPES_TEST_DATA:-$(cd "$(dirname "$0")/.." && pwd)/.cache/testdata}"
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi

apt_updated=0
apt_update() { if [ $apt_updated = 0 ]; then $SUDO apt-get update -qq; apt_updated=1; fi; }

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
if [ ${#missing[@]} -gt 0 ]; then
    apt_update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -d "$DATA_DIR/pocketsphinx" ]; then
    apt_update
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq pocketsphinx-testdata >/dev/null && dpkg -x pocketsphinx-testdata_*.deb root)
    mkdir -p "$DATA_DIR"
    mv "$tmp/root/usr/share/pocketsphinx/test/data" "$DATA_DIR/pocketsphinx"
    rm -rf "$tmp"
fi
echo "system dependencies ready; test data in $DATA_DIR"
