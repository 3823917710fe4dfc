# One least-privilege role per function. Each function's statements live in
# local.function_statements; adding a function is one map entry here and one in
# var.functions.

locals {
  table_arns = [aws_dynamodb_table.main.arn, "${aws_dynamodb_table.main.arn}/index/*"]

  artifacts_arn = "${aws_s3_bucket.artifacts.arn}/T/*/artifacts/*"
  queue_arn     = { for q, r in aws_sqs_queue.queue : q => r.arn }
  consume       = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"]

  # What each incident role reads and writes: its own queue, the queues it hands
  # work to, the table and the artifact objects.
  role_access = {
    observer      = { consumes = "observations", sends = ["analyzer"], table = ["dynamodb:GetItem", "dynamodb:PutItem"] }
    analyzer      = { consumes = "analyzer", sends = ["planner"], table = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query"] }
    planner       = { consumes = "planner", sends = ["policy-gate"], table = ["dynamodb:GetItem", "dynamodb:PutItem"] }
    "policy-gate" = { consumes = "policy-gate", sends = ["executor", "memory"], table = ["dynamodb:GetItem", "dynamodb:PutItem"] }
    executor      = { consumes = "executor", sends = ["executor", "verifier", "memory"], table = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"] }
    verifier      = { consumes = "verifier", sends = ["verifier", "memory"], table = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query"] }
    memory        = { consumes = "memory", sends = [], table = ["dynamodb:GetItem", "dynamodb:PutItem"] }
  }

  role_statements = {
    for role, a in local.role_access : role => concat(
      [
        { Sid = "Table", Action = a.table, Resource = [aws_dynamodb_table.main.arn] },
        { Sid = "Artifacts", Action = ["s3:GetObject", "s3:PutObject"], Resource = [local.artifacts_arn] },
        { Sid = "Consume", Action = local.consume, Resource = [lookup(local.queue_arn, a.consumes, "")] },
      ],
      length(a.sends) == 0 ? [] : [{ Sid = "Send", Action = ["sqs:SendMessage"], Resource = [for q in a.sends : lookup(local.queue_arn, q, "")] }],
      # The executor presigns the PUT agents upload collect_evidence bundles with.
      role == "executor" ? [{ Sid = "EvidenceUploads", Action = ["s3:PutObject"], Resource = ["${aws_s3_bucket.artifacts.arn}/T/*/evidence/*"] }] : [],
    )
  }

  function_statements = merge(local.role_statements, {
    api = [
      {
        Sid = "Table"
        Action = [
          "dynamodb:BatchGetItem",
          "dynamodb:ConditionCheckItem",
          "dynamodb:DeleteItem",
          "dynamodb:GetItem",
          "dynamodb:PutItem",
          "dynamodb:Query",
          "dynamodb:TransactWriteItems",
          "dynamodb:UpdateItem",
        ]
        Resource = local.table_arns
      },
      {
        # Telemetry to the observer; approvals and finished incident actions to
        # the executor; rejections to memory.
        Sid      = "Queues"
        Action   = ["sqs:SendMessage"]
        Resource = [for q in ["observations", "executor", "memory"] : local.queue_arn[q] if contains(var.queues, q)]
      },
      {
        Sid      = "Payloads"
        Action   = ["s3:GetObject", "s3:PutObject"]
        Resource = ["${aws_s3_bucket.artifacts.arn}/*"]
      },
      {
        Sid      = "SigningKeys"
        Action   = ["secretsmanager:GetSecretValue"]
        Resource = [aws_secretsmanager_secret.signing_keys.arn]
      },
      {
        # GET /v1/status: one read-only call per dependency, every queue's depth.
        Sid    = "Status"
        Action = ["dynamodb:DescribeTable", "secretsmanager:DescribeSecret", "sqs:GetQueueAttributes"]
        Resource = concat(
          [aws_dynamodb_table.main.arn, aws_secretsmanager_secret.signing_keys.arn],
          [for q in var.queues : aws_sqs_queue.queue[q].arn],
          [for q in var.queues : aws_sqs_queue.dlq[q].arn],
        )
      },
      {
        # GET /v1/status: each queue's ApproximateAgeOfOldestMessage, which SQS
        # publishes only to CloudWatch. GetMetricData takes no resource ARN.
        Sid      = "QueueAge"
        Action   = ["cloudwatch:GetMetricData"]
        Resource = ["*"]
      },
    ]
  })
}

data "aws_iam_policy_document" "assume_lambda" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "function" {
  for_each           = var.functions
  name               = "${var.name_prefix}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.assume_lambda.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "function" {
  for_each = var.functions
  name     = "${var.name_prefix}-${each.key}"
  role     = aws_iam_role.function[each.key].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      [for s in lookup(local.function_statements, each.key, []) : merge(s, { Effect = "Allow" })],
      [{
        Sid      = "Logs"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
        Resource = ["${aws_cloudwatch_log_group.function[each.key].arn}:*"]
      }]
    )
  })

  lifecycle {
    precondition {
      condition     = contains(keys(local.function_statements), each.key)
      error_message = "Function \"${each.key}\" has no entry in local.function_statements (infra/iam.tf): add its least-privilege statements there."
    }
  }
}

resource "aws_cloudwatch_log_group" "function" {
  for_each          = var.functions
  name              = "/aws/lambda/${var.name_prefix}-${each.key}"
  retention_in_days = var.log_retention_days
  tags              = local.tags
}
