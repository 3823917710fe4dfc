# The Tether module applied to a local AWS emulator (moto or LocalStack).
terraform {
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }
}

variable "endpoint" {
  type    = string
  default = "http://127.0.0.1:4566"
}

variable "name_prefix" {
  type    = string
  default = "tether"
}

provider "aws" {
  region                      = "us-east-1"
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_requesting_account_id  = true
  s3_use_path_style           = true

  endpoints {
    dynamodb       = var.endpoint
    sqs            = var.endpoint
    s3             = var.endpoint
    iam            = var.endpoint
    sts            = var.endpoint
    secretsmanager = var.endpoint
    lambda         = var.endpoint
    cloudwatchlogs = var.endpoint
    cloudwatch     = var.endpoint
    sns            = var.endpoint
  }
}

variable "lambda_artifacts_dir" {
  description = "Leave null on the emulator: it cannot run Lambda without Docker, tether-local hosts the handlers. Set it to check the function resources against moto (created, not invoked)."
  type        = string
  default     = null
}

module "tether" {
  source               = "../.."
  name_prefix          = var.name_prefix
  lambda_artifacts_dir = var.lambda_artifacts_dir
  # A throwaway stack: delete the secret at once, so destroy + apply with the same
  # prefix works (the module's default keeps it restorable for 7 days).
  secret_recovery_window_days = 0
}

# Every output of the module, re-exported (`terraform output -json env` configures
# tether-local).
output "env" {
  value = module.tether.env
}

output "table_name" {
  value = module.tether.table_name
}

output "table_arn" {
  value = module.tether.table_arn
}

output "bucket_name" {
  value = module.tether.bucket_name
}

output "queue_urls" {
  value = module.tether.queue_urls
}

output "dlq_urls" {
  value = module.tether.dlq_urls
}

output "signing_secret_id" {
  value = module.tether.signing_secret_id
}

output "api_url" {
  value = module.tether.api_url
}

output "function_role_arns" {
  value = module.tether.function_role_arns
}

output "function_policies" {
  value = module.tether.function_policies
}
