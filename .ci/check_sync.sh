#!/usr/bin/env bash
# Fails when aiinfra_nb/ is out of sync with nbs/ or a notebook is not clean (nbdev 3).
# It leaves the files fixed, like a formatter: review the changes and commit them.
set -euo pipefail
cd "$(dirname "$0")/.."
snap=$(mktemp -d); trap 'rm -rf "$snap"' EXIT
cp -r aiinfra_nb nbs "$snap"/
nbdev-export
nbdev-clean
if ! diff -rq -x __pycache__ -x .ipynb_checkpoints "$snap/aiinfra_nb" aiinfra_nb \
   || ! diff -rq -x .ipynb_checkpoints "$snap/nbs" nbs; then
  echo "nbdev sync check FAILED: the files above were out of sync with nbs/ (or notebooks were not clean)." >&2
  echo "nbdev-export and nbdev-clean have now rewritten them: review and commit." >&2
  exit 1
fi
echo "nbdev sync check: package in sync with nbs/, notebooks clean"
