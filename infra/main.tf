# Tether control plane: one DynamoDB table, SQS work queues with dead-letter queues,
# an S3 bucket for payloads, the agent-credential key ring in Secrets Manager, and
# one Lambda function, IAM role and log group per function.


locals {
  bucket_name = coalesce(var.bucket_name, "${var.name_prefix}-artifacts")
  tags        = merge({ "app" = "tether", "tether:prefix" = var.name_prefix }, var.tags)
  # AWS's advice for a Lambda-consumed queue: visibility >= 6x the function timeout,
  # so a message is not redelivered while a (retried) invocation still holds it.
  queue_visibility_timeout_s = max(60, 6 * max(concat([0], [for f in var.functions : f.timeout_s])...))
}

# ---- storage -------------------------------------------------------------------

resource "aws_dynamodb_table" "main" {
  name         = "${var.name_prefix}-main"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"
  range_key    = "sk"

  attribute {
    name = "pk"
    type = "S"
  }
  attribute {
    name = "sk"
    type = "S"
  }
  attribute {
    name = "gsi1pk"
    type = "S"
  }
  attribute {
    name = "gsi1sk"
    type = "S"
  }

  # Tenant-wide listings: agents, services and actions of one tenant.
  global_secondary_index {
    name            = "gsi1"
    hash_key        = "gsi1pk"
    range_key       = "gsi1sk"
    projection_type = "ALL"
  }

  # Bounds storage only: nothing in Tether depends on an item being gone.
  ttl {
    attribute_name = "ttl"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled = true
  }

  tags = local.tags
}

resource "aws_sqs_queue" "dlq" {
  for_each                  = toset(var.queues)
  name                      = "${var.name_prefix}-${each.key}-dlq"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
  tags                      = local.tags
}

resource "aws_sqs_queue" "queue" {
  for_each                   = toset(var.queues)
  name                       = "${var.name_prefix}-${each.key}"
  visibility_timeout_seconds = local.queue_visibility_timeout_s
  message_retention_seconds  = 345600
  sqs_managed_sse_enabled    = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq[each.key].arn
    maxReceiveCount     = var.max_receive_count
  })
  tags = local.tags
}

resource "aws_s3_bucket" "artifacts" {
  bucket = local.bucket_name
  tags   = local.tags
}

resource "aws_s3_bucket_versioning" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

# Superseded object versions and abandoned multipart uploads do not pile up.
resource "aws_s3_bucket_lifecycle_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  rule {
    id     = "noncurrent-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
  depends_on = [aws_s3_bucket_versioning.artifacts]
}

resource "aws_s3_bucket_public_access_block" "artifacts" {
  bucket                  = aws_s3_bucket.artifacts.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

# The agent-credential key ring. No secret version here, so key material never
# enters Terraform state: `tether-local keys rotate` writes and rotates it.
resource "aws_secretsmanager_secret" "signing_keys" {
  name                    = "${var.name_prefix}/signing-keys"
  description             = "Tether agent-credential signing keys (JSON key ring; rotate with tether-local keys rotate)"
  recovery_window_in_days = var.secret_recovery_window_days
  tags                    = local.tags
}
