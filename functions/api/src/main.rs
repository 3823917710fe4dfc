//! The `api` Lambda: parse config, build clients once, serve the router.

use tether_aws::{Clients, Config, EnvStrings};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    // JSON logs on Lambda (AWS_LAMBDA_LOG_FORMAT=JSON is set by Terraform).
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .without_time()
        .init();
    let config = Config::from_strings(&EnvStrings)?;
    let clients = Clients::from_env().await;
    let (plane, _calls) = tether_api::build(&config, &clients);
    let chain = tether_api::build_chain(&config, &clients);
    lambda_http::run(tether_api::app(plane, chain)).await
}
