output "table_name" {
  value = aws_dynamodb_table.main.name
}

output "table_arn" {
  value = aws_dynamodb_table.main.arn
}

output "bucket_name" {
  value = aws_s3_bucket.artifacts.bucket
}

output "queue_urls" {
  value = { for q, r in aws_sqs_queue.queue : q => r.url }
}

output "dlq_urls" {
  value = { for q, r in aws_sqs_queue.dlq : q => r.url }
}

output "signing_secret_id" {
  value = aws_secretsmanager_secret.signing_keys.name
}

output "api_url" {
  description = "The api function's URL; null when no packages were given."
  value       = length(aws_lambda_function_url.api) > 0 ? aws_lambda_function_url.api[0].function_url : null
}

output "function_role_arns" {
  value = { for f, r in aws_iam_role.function : f => r.arn }
}

output "function_policies" {
  description = "Each function's IAM policy document (JSON)."
  value       = { for f, p in aws_iam_role_policy.function : f => p.policy }
}

output "env" {
  description = "The TETHER_* variables each function gets; the local runner takes its configuration from here."
  value       = local.function_env
}
