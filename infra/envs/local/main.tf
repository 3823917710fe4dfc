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
  }
}

module "tether" {
  source                      = "../.."
  name_prefix                 = var.name_prefix
  secret_recovery_window_days = 0
}

output "env" {
  value = module.tether.env
}

output "table_name" {
  value = module.tether.table_name
}

output "queue_urls" {
  value = module.tether.queue_urls
}

output "dlq_urls" {
  value = module.tether.dlq_urls
}

output "bucket_name" {
  value = module.tether.bucket_name
}

output "signing_secret_id" {
  value = module.tether.signing_secret_id
}

output "function_policies" {
  value = module.tether.function_policies
}
