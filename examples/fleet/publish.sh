#!/usr/bin/env bash
# Publishes a policy directory to the fleet's bundle server (run.sh) as a
# new signed bundle: every instance polls it and has it in force within
# its polling interval (FLEET_BUNDLE_POLLING).
#
#   MAILGATE=./mailgate FLEET_DIR=... examples/fleet/publish.sh [POLICY_DIR [REVISION]]
#
# POLICY_DIR defaults to examples/fleet/policy, REVISION to the UTC time.
# Environment: MAILGATE (as for run.sh), FLEET_DIR (run.sh's state
# directory, required: the bundle goes to $FLEET_DIR/bundles/mail.tar.gz),
# FLEET_SIGNING_KEY ($FLEET_DIR/bundle-signing.pem, made by run.sh).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
read -r -a mailgate <<<"${MAILGATE:-mailgate}"
: "${FLEET_DIR:?set FLEET_DIR to the state directory of run.sh}"
dir=${1:-$here/policy}
revision=${2:-$(date -u +%Y%m%dT%H%M%SZ)}

# Written beside the file and renamed: the server never serves half a bundle.
"${mailgate[@]}" policy bundle -dir "$dir" -revision "$revision" \
  -signing-key "${FLEET_SIGNING_KEY:-$FLEET_DIR/bundle-signing.pem}" \
  -out "$FLEET_DIR/bundles/mail.tar.gz"
