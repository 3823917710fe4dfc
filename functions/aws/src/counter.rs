//! Counts AWS calls per service and operation, one per HTTP attempt (retries
//! count: they are billed). Tests and benchmarks read it to hold the poll to its
//! cost budget.

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
    fn record(&self, service: &str, operation: &str) {
        let key = format!("{}:{operation}", service.to_ascii_lowercase());
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default() += 1;
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
        }
        Ok(())
    }
}
