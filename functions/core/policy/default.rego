# Tether's default incident policy. The policy gate evaluates
# data.tether.gate.decision once per proposal step, in-process (regorus).
#
# input.proposal: {step, action, safety, blast_radius, agent_id}
#   safety is one of read_only, reversible, impactful, destructive
# input.settings: the tenant's settings (any subset of `defaults` below)
# input.recent_executions: actions this tenant's runs executed in the last hour
#
# decision: {verdict, mode, reasons}
#   verdict: block | require_approval | execute | dry_run
#   mode: how the step runs once allowed (execute | dry_run)
package tether.gate

import rego.v1

defaults := {
	"dry_run": true,
	"require_approval": true,
	"allow_impactful": false,
	"allow_destructive": false,
	"allowed_actions": [],
	"max_executions_per_hour": 20,
}

settings := object.union(defaults, object.get(input, "settings", {}))

blocks contains "destructive actions are blocked by default (tenant setting allow_destructive)" if {
	input.proposal.safety == "destructive"
	not settings.allow_destructive
}

blocks contains "impactful actions are blocked by default (tenant setting allow_impactful)" if {
	input.proposal.safety == "impactful"
	not settings.allow_impactful
}

blocks contains msg if {
	count(settings.allowed_actions) > 0
	not input.proposal.action in settings.allowed_actions
	msg := sprintf("action %s is not on the tenant's allow-list", [input.proposal.action])
}

blocks contains msg if {
	input.recent_executions >= settings.max_executions_per_hour
	msg := sprintf("rate limit reached: %d actions in the last hour (limit %d)", [input.recent_executions, settings.max_executions_per_hour])
}

mode := "dry_run" if settings.dry_run

mode := "execute" if not settings.dry_run

mode_reason := "dry-run is on by default (tenant setting dry_run)" if settings.dry_run

mode_reason := "tenant turned dry-run off: the action changes the host" if not settings.dry_run

decision := {"verdict": "block", "mode": mode, "reasons": sort(blocks)} if count(blocks) > 0

decision := {
	"verdict": "require_approval",
	"mode": mode,
	"reasons": [sprintf("%s action: approval is required by default (tenant setting require_approval)", [input.proposal.safety]), mode_reason],
} if {
	count(blocks) == 0
	settings.require_approval
}

decision := {
	"verdict": mode,
	"mode": mode,
	"reasons": ["tenant does not require approval", mode_reason],
} if {
	count(blocks) == 0
	not settings.require_approval
}
