# Operating it: alarms on what needs a person.
# - A dead-letter queue that is not empty: a message failed every try (its run is
#   marked failed), so something is broken or poisoned.
# - A function's error rate over `error_rate_alarm_pct`, from the metrics the
#   functions log in Embedded Metric Format (namespace Tether, by function):
#   the api's 5xx answers per request, a role's failed messages per message.
# Alarms notify `alarm_topic_arn`, or the topic created with `create_alarm_topic`;
# with neither, they are visible in CloudWatch only.

resource "aws_sns_topic" "alarms" {
  count             = var.create_alarm_topic ? 1 : 0
  name              = "${var.name_prefix}-alarms"
  kms_master_key_id = "alias/aws/sns"
  tags              = local.tags
}

locals {
  alarm_actions = compact([
    var.alarm_topic_arn,
    var.create_alarm_topic ? aws_sns_topic.alarms[0].arn : "",
  ])
}

resource "aws_cloudwatch_metric_alarm" "dlq_not_empty" {
  for_each            = toset(var.queues)
  alarm_name          = "${var.name_prefix}-${each.key}-dlq-not-empty"
  alarm_description   = "Messages of ${each.key} failed every try and wait in ${aws_sqs_queue.dlq[each.key].name}."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.dlq[each.key].name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = local.tags
}

resource "aws_cloudwatch_metric_alarm" "error_rate" {
  for_each            = var.functions
  alarm_name          = "${var.name_prefix}-${each.key}-error-rate"
  alarm_description   = "More than ${var.error_rate_alarm_pct} % of ${each.key}'s ${each.key == "api" ? "requests answered 5xx" : "messages failed"} over 5 minutes."
  evaluation_periods  = 1
  threshold           = var.error_rate_alarm_pct
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = local.tags

  metric_query {
    id          = "rate"
    expression  = "100 * errors / MAX([total, 1])"
    label       = "error rate (%)"
    return_data = true
  }
  metric_query {
    id = "errors"
    metric {
      namespace   = "Tether"
      metric_name = each.key == "api" ? "Errors" : "Failures"
      dimensions  = { function = "${var.name_prefix}-${each.key}" }
      period      = 300
      stat        = "Sum"
    }
  }
  metric_query {
    id = "total"
    metric {
      namespace   = "Tether"
      metric_name = each.key == "api" ? "Requests" : "Messages"
      dimensions  = { function = "${var.name_prefix}-${each.key}" }
      period      = 300
      stat        = "Sum"
    }
  }
}
