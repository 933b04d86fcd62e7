#!/usr/bin/env bash
# Lints the CloudFormation template in deploy/ with cfn-lint from the project venv (installed by
# scripts/services.sh). Exits non-zero on any error or warning cfn-lint reports.
#
#   scripts/lint-deploy.sh            # lint deploy/cloudformation/*.json
#   scripts/lint-deploy.sh FILE...    # lint these templates
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CFN_LINT="${CFN_LINT:-$ROOT/.venv/bin/cfn-lint}"
if [ ! -x "$CFN_LINT" ]; then
  echo "lint-deploy: $CFN_LINT not found; run scripts/services.sh up first" >&2
  exit 2
fi
if [ "$#" -eq 0 ]; then
  set -- "$ROOT"/deploy/cloudformation/*.json
fi
"$CFN_LINT" --version >&2
"$CFN_LINT" -- "$@"
echo "lint-deploy: cfn-lint passed on $*" >&2
