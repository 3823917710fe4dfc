//! The `analyzer` Lambda: the incident chain's analyzer role on its SQS queue.
// The Lambda runtime's future around the chain's handlers nests deeply.
#![recursion_limit = "256"]

use tether_core::incident::artifact::Stage;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tether_roles::lambda_main(Stage::Analyzer).await
}
