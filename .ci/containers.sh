#!/usr/bin/env bash
# buildah, skopeo, the reference registry and debootstrap for the image tests (aiinfra image build/push).
# Installed with apt when root; otherwise the image tests are skipped, loudly.
set -uo pipefail
missing=()
for tool in buildah skopeo docker-registry debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[ ${#missing[@]} = 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "WARNING: ${missing[*]} missing and not root to install: the image tests will be SKIPPED" >&2
  exit 0
fi
echo "installing ${missing[*]} (apt) for the image tests..."
(apt-get install -y -qq buildah skopeo docker-registry debootstrap >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah skopeo docker-registry debootstrap >/dev/null; }) \
  || echo "WARNING: the container tools could not be installed: the image tests will be SKIPPED" >&2
