# The functions themselves, created only when packages exist
# (var.lambda_artifacts_dir). The emulator cannot run Lambda without Docker, so
# the local loop leaves them out and runs the same binaries under tether-local
# (serve, or lambda: the real entry points under a Runtime API emulator).

locals {
  deploy_functions = var.lambda_artifacts_dir != null
  function_env = merge(
    {
      TETHER_TABLE                 = aws_dynamodb_table.main.name
      TETHER_BUCKET                = aws_s3_bucket.artifacts.bucket
      TETHER_SIGNING_SECRET_ID     = aws_secretsmanager_secret.signing_keys.name
      TETHER_OPERATOR_JWT_ISSUER   = var.operator_jwt_issuer
      TETHER_OPERATOR_JWT_AUDIENCE = var.operator_jwt_audience
      TETHER_MAX_RECEIVES          = tostring(var.max_receive_count)
    },
    var.operator_jwks == "" ? {} : { TETHER_OPERATOR_JWKS = var.operator_jwks },
    var.llm_url == "" ? {} : { TETHER_LLM_URL = var.llm_url, TETHER_LLM_MODEL = var.llm_model },
    { for q in var.queues : "TETHER_QUEUE_URL_${upper(replace(q, "-", "_"))}" => aws_sqs_queue.queue[q].url }
  )
}

resource "aws_lambda_function" "function" {
  for_each         = local.deploy_functions ? var.functions : {}
  function_name    = "${var.name_prefix}-${each.key}"
  role             = aws_iam_role.function[each.key].arn
  runtime          = "provided.al2023"
  architectures    = ["arm64"]
  handler          = "bootstrap"
  filename         = "${var.lambda_artifacts_dir}/${each.key}/bootstrap.zip"
  source_code_hash = filebase64sha256("${var.lambda_artifacts_dir}/${each.key}/bootstrap.zip")
  memory_size      = each.value.memory_mb
  timeout          = each.value.timeout_s
  # The api is capped and each role reserved: a flood of polls or operator calls
  # on the public URL cannot take the concurrency the incident chain needs.
  reserved_concurrent_executions = each.value.reserved_concurrency

  logging_config {
    log_format = "JSON"
    log_group  = aws_cloudwatch_log_group.function[each.key].name
  }

  environment {
    variables = local.function_env
  }

  tags = local.tags
}

# Agents and operators reach the api function directly. Authorization NONE is
# deliberate: the function authenticates every request itself (agent JWTs,
# operator JWTs, API keys) and an IAM-authorized URL would demand SigV4 from agents.
resource "aws_lambda_function_url" "api" {
  count              = local.deploy_functions && contains(keys(var.functions), "api") ? 1 : 0
  function_name      = aws_lambda_function.function["api"].function_name
  authorization_type = "NONE"
}

# Each incident role consumes its own queue (the observer: observations), in
# batches, reporting per-message failures so one poison message does not fail
# (and redeliver) its whole batch.
locals {
  role_queues = {
    observer      = "observations"
    analyzer      = "analyzer"
    planner       = "planner"
    "policy-gate" = "policy-gate"
    executor      = "executor"
    verifier      = "verifier"
    memory        = "memory"
  }
}

resource "aws_lambda_event_source_mapping" "role" {
  for_each = local.deploy_functions ? {
    for f, q in local.role_queues : f => q if contains(keys(var.functions), f) && contains(var.queues, q)
  } : {}
  function_name                      = aws_lambda_function.function[each.key].arn
  event_source_arn                   = aws_sqs_queue.queue[each.value].arn
  batch_size                         = 10
  maximum_batching_window_in_seconds = 1
  function_response_types            = ["ReportBatchItemFailures"]
}
