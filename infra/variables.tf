variable "name_prefix" {
  description = "Prefix of every resource name (table, queues, bucket, secret, functions, roles)."
  type        = string
  default     = "tether"
  validation {
    condition     = can(regex("^[a-z0-9-]{1,24}$", var.name_prefix))
    error_message = "name_prefix must be 1-24 lowercase letters, digits or '-'."
  }
}

variable "bucket_name" {
  description = "S3 bucket for payloads and evidence; default \"<name_prefix>-artifacts\" (bucket names are global: set one in a real account)."
  type        = string
  default     = null
}

variable "lambda_artifacts_dir" {
  description = "Directory with one <function>/bootstrap.zip per function, as written by bin/package (`cargo lambda build --profile lambda-package --arm64 --output-format zip`, target/lambda). Null: no Lambda functions or Function URL are created (the emulator cannot run them without Docker; tether-local runs the same binaries)."
  type        = string
  default     = null
}

variable "functions" {
  description = "Deployed functions: name => memory, timeout and reserved concurrency (-1: none; the api's cap keeps a flood on its public URL from starving the incident roles, whose reservations keep them running). Each needs a policy in local.function_statements. Reservations need account concurrency to spare: AWS keeps at least 10 of the account's limit unreserved, so the defaults (117 in all) need a limit of 127 or more; set -1 on small accounts."
  type = map(object({
    memory_mb            = number
    timeout_s            = number
    reserved_concurrency = optional(number, -1)
  }))
  default = {
    api           = { memory_mb = 256, timeout_s = 10, reserved_concurrency = 100 }
    observer      = { memory_mb = 256, timeout_s = 30, reserved_concurrency = 5 }
    analyzer      = { memory_mb = 128, timeout_s = 30, reserved_concurrency = 2 }
    planner       = { memory_mb = 128, timeout_s = 30, reserved_concurrency = 2 }
    "policy-gate" = { memory_mb = 128, timeout_s = 30, reserved_concurrency = 2 }
    executor      = { memory_mb = 128, timeout_s = 30, reserved_concurrency = 2 }
    verifier      = { memory_mb = 128, timeout_s = 30, reserved_concurrency = 2 }
    memory        = { memory_mb = 128, timeout_s = 30, reserved_concurrency = 2 }
  }
  validation {
    condition     = alltrue([for f in var.functions : f.reserved_concurrency == -1 || f.reserved_concurrency >= 0])
    error_message = "reserved_concurrency is -1 (none) or a count of instances."
  }
}

variable "queues" {
  description = "Work queues (each gets a dead-letter queue); functions get each URL as TETHER_QUEUE_URL_<NAME> ('-' becomes '_')."
  type        = list(string)
  default     = ["observations", "analyzer", "planner", "policy-gate", "executor", "verifier", "memory"]
  validation {
    condition     = alltrue([for q in var.queues : can(regex("^[a-z0-9_-]{1,40}$", q))])
    error_message = "Queue names must be 1-40 lowercase letters, digits, '_' or '-'."
  }
  validation {
    condition     = contains(var.queues, "observations")
    error_message = "The api function sends to the \"observations\" queue: keep it in var.queues."
  }
}

variable "max_receive_count" {
  description = "Deliveries of a message before it moves to its dead-letter queue."
  type        = number
  default     = 5
}

variable "noncurrent_version_days" {
  description = "Days a superseded version of a bucket object is kept before S3 deletes it."
  type        = number
  default     = 30
}

variable "alarm_topic_arn" {
  description = "An existing SNS topic the alarms notify (DLQ not empty, error rate); null: none."
  type        = string
  default     = null
}

variable "create_alarm_topic" {
  description = "Create an SNS topic `<prefix>-alarms` for the alarms (subscribe to it yourself)."
  type        = bool
  default     = false
}

variable "error_rate_alarm_pct" {
  description = "A function's error rate (api: 5xx per request; roles: failed per message) over 5 minutes that raises its alarm."
  type        = number
  default     = 5
}

variable "log_retention_days" {
  type    = number
  default = 14
}

variable "secret_recovery_window_days" {
  description = "Days a deleted signing-key secret can be restored (0 deletes at once)."
  type        = number
  default     = 7
}

variable "operator_jwt_issuer" {
  type    = string
  default = "tether"
}

variable "operator_jwt_audience" {
  type    = string
  default = "tether-operators"
}

variable "operator_jwks" {
  description = "JWKS (JSON) of the identity provider that signs operator JWTs; empty: API keys only."
  type        = string
  default     = ""
}

variable "tags" {
  type    = map(string)
  default = {}
}

variable "llm_url" {
  description = "Optional OpenAI-compatible base URL (…/v1) the analyzer asks to reword its top hypothesis; empty: off. Ranking and decisions never depend on it."
  type        = string
  default     = ""
}

variable "llm_model" {
  type    = string
  default = "gpt-4o-mini"
}
