//! The `api` Lambda: logging, config, clients once, then the router under
//! `lambda_http` (Function URL events, payload format 2.0).

use tether_aws::logging::{self, ErrorChain, Output};
use tether_aws::{Clients, Config, EnvStrings};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    logging::init(&EnvStrings, Output::Stdout, "api");
    let config = Config::from_strings(&EnvStrings)
        .inspect_err(|e| tracing::error!(error = %ErrorChain(e), "invalid configuration"))?;
    let clients = Clients::from_env().await;
    let (plane, _calls) = tether_api::build(&config, &clients);
    let chain = tether_api::build_chain(&config, &clients);
    tracing::info!(function = "api", "initialised");
    let probe = std::sync::Arc::new(tether_aws::status::Probe::new(&clients, &config));
    lambda_http::run(tether_api::app(plane, chain, probe)).await
}
