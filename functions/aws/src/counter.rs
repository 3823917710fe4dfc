//! Counts AWS calls per service and operation, one per HTTP attempt (retries
//! count: they are billed). Tests and benchmarks read it to hold the poll to its
//! cost budget.
//!
//! Two views: the process-wide [`CallCounter`], and the calls of one request or
//! one queue message, counted by [`scoped`] in a task-local so concurrent requests
//! on one instance never mix their counts (the SDK's interceptors run in the
//! calling task). The per-request count goes into that request's log line.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Calls made so far, keyed `service:Operation` (e.g. `dynamodb:Query`).
#[derive(Debug, Default)]
pub struct CallCounter {
    counts: Mutex<BTreeMap<String, u64>>,
}

impl CallCounter {
    pub(crate) fn record(&self, service: &str, operation: &str) {
        let key = format!("{}:{operation}", service.to_ascii_lowercase());
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default() += 1;
    }

    /// Total calls.
    pub fn total(&self) -> u64 {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    }

    /// `dynamodb:Query=1,sqs:SendMessage=1`: compact, for a log field.
    pub fn summary(&self) -> String {
        let counts = self.snapshot();
        let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.join(",")
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CountingInterceptor(Arc<CallCounter>);

impl CountingInterceptor {
    pub(crate) fn new(counter: Arc<CallCounter>) -> Self {
        Self(counter)
    }
}

impl Intercept for CountingInterceptor {
    fn name(&self) -> &'static str {
        "TetherCallCounter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(m) = cfg.load::<Metadata>() {
            self.0.record(m.service(), m.name());
            let _ = SCOPE.try_with(|c| c.record(m.service(), m.name()));
        }
        Ok(())
    }
}

tokio::task_local! {
    static SCOPE: Arc<CallCounter>;
}

/// Runs `f`, counting the AWS calls it makes (and only those): what one request
/// or one message cost.
pub async fn scoped<F: std::future::Future>(f: F) -> (F::Output, Arc<CallCounter>) {
    let calls = Arc::new(CallCounter::default());
    let out = SCOPE.scope(calls.clone(), f).await;
    (out, calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scopes_count_only_their_own_calls() {
        let (_, outer) = scoped(async {
            let _ = SCOPE.try_with(|c| c.record("DynamoDB", "Query"));
            let (_, inner) = scoped(async {
                let _ = SCOPE.try_with(|c| c.record("SQS", "SendMessage"));
            })
            .await;
            assert_eq!(inner.summary(), "sqs:SendMessage=1");
        })
        .await;
        assert_eq!(outer.summary(), "dynamodb:Query=1");
        assert_eq!(outer.total(), 1);
    }
}
