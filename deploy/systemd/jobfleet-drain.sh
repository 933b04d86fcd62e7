#!/usr/bin/env bash
# Scale-in drain for an instance of the jobfleet Auto Scaling group (jobfleet-drain.service).
#
# When the group picks this instance for termination, the lifecycle hook keeps it in
# Terminating:Wait for DrainGraceSeconds, and IMDS reports the target lifecycle state
# `Terminated`. Then: stop the worker (SIGTERM: finish in-flight jobs, hand back the rest, flush
# metrics), stop the scheduler, and complete the lifecycle action. If anything here fails, the
# hook's heartbeat runs out and the group terminates the instance anyway (DefaultResult
# CONTINUE); jobs not finished reappear on their queue after the visibility timeout.
#
# Needs: curl, the aws CLI, and env AWS_REGION, JOBFLEET_ASG_NAME, JOBFLEET_LIFECYCLE_HOOK.
set -uo pipefail

IMDS=http://169.254.169.254
POLL="${JOBFLEET_DRAIN_POLL:-5}"

imds_get() { # path
  local token
  token="$(curl -sf -X PUT "$IMDS/latest/api/token" -H 'X-aws-ec2-metadata-token-ttl-seconds: 60')" || return 1
  curl -sf -H "X-aws-ec2-metadata-token: $token" "$IMDS$1"
}

log() { echo "jobfleet-drain: $*"; }

while :; do
  state="$(imds_get /latest/meta-data/autoscaling/target-lifecycle-state || true)"
  if [ "$state" = "Terminated" ]; then
    break
  fi
  sleep "$POLL"
done

instance_id="$(imds_get /latest/meta-data/instance-id)"
log "scale-in of $instance_id: draining"
started=$(date +%s)
# Blocks until the worker has exited (or TimeoutStopSec has passed).
systemctl stop jobfleet-worker.service jobfleet-scheduler.service
log "worker stopped after $(($(date +%s) - started)) s; completing lifecycle action"

if ! aws autoscaling complete-lifecycle-action \
  --region "$AWS_REGION" \
  --auto-scaling-group-name "$JOBFLEET_ASG_NAME" \
  --lifecycle-hook-name "$JOBFLEET_LIFECYCLE_HOOK" \
  --instance-id "$instance_id" \
  --lifecycle-action-result CONTINUE; then
  log "complete-lifecycle-action failed; the hook times out on its own"
fi
# Nothing more to do on this instance; stay up quietly until it is terminated.
exec sleep infinity
