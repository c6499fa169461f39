//! The ten-line worker: handles "welcome" jobs of the "emails" queue until SIGTERM or Ctrl-C.
//! Run: `JOBD_ENDPOINT=127.0.0.1:50051 cargo run -p jobd-client --example worker`
//! (`JOBD_QUEUE` names another queue).

use jobd_client::{BoxError, Client, JobContext, Worker};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let endpoint = std::env::var("JOBD_ENDPOINT").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let queue = std::env::var("JOBD_QUEUE").unwrap_or_else(|_| "emails".into());
    let client = Client::connect(endpoint).await?;
    Worker::new(client, [queue])
        .handle("welcome", |job: JobContext| async move {
            let to: serde_json::Value = serde_json::from_slice(job.payload())?;
            Ok(format!(
                "welcome sent to {}",
                to["to"].as_str().unwrap_or("?")
            ))
        })
        .run() // until SIGTERM or Ctrl-C
        .await?;
    Ok(())
}
