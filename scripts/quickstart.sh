#!/usr/bin/env bash
# README command 1: set up a fresh machine and boot flint's default guest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
npm ci
npm run build
node dist/bundle/main.js doctor
node dist/bundle/main.js demo "$@"
