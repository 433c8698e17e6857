//! The local producer of processed messages: plays the workflow runtime for the processed queue by
//! writing realistic processed messages ([`tests::processed_messages`]) for one environment into the
//! bucket `S3_BUCKET` at `S3_ENDPOINT` (the SDK's `AWS_*` variables give the region and the
//! credentials), creating the bucket if it is missing. `deploy/up.sh` runs it against the local S3
//! server on every start, as that server keeps nothing across restarts. Messages are spread over the
//! last `--days` days, about 70% `success`, 20% `fail` and 10% `ignore`, plus `--malformed` objects
//! under well-formed keys whose body is not a processed message.

use anyhow::Context;
use clap::Parser;
use processed_queue::S3Args;
use tests::processed_messages::produce;
use uuid::Uuid;

#[derive(Parser)]
#[command(about = "Writes realistic processed messages into the processed queue's S3 bucket")]
struct Cli {
    #[command(flatten)]
    s3: S3Args,
    /// The organization the messages belong to.
    #[arg(long)]
    organization_id: Uuid,
    /// The environment the messages were processed in.
    #[arg(long)]
    environment_id: Uuid,
    /// How many well-formed messages to write.
    #[arg(long, default_value_t = 200)]
    count: u64,
    /// Over how many days, up to now, the messages are spread.
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// How many objects with a body that is not a processed message to write as well.
    #[arg(long, default_value_t = 3)]
    malformed: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let bucket = cli
        .s3
        .bucket()
        .context("no bucket: set S3_BUCKET (or --s3-bucket)")?;
    let endpoint = cli.s3.endpoint.as_deref().unwrap_or("AWS S3");
    bucket
        .ensure_exists()
        .await
        .with_context(|| format!("creating bucket {} at {endpoint}", bucket.name()))?;
    let keys = produce(
        &bucket,
        cli.organization_id,
        cli.environment_id,
        cli.count,
        cli.days,
        cli.malformed,
    )
    .await?;
    println!(
        "wrote {} objects ({} messages over the last {} days, {} malformed) to s3://{}/{}/{}/ at \
         {endpoint}",
        keys.len(),
        cli.count,
        cli.days.max(1),
        cli.malformed,
        bucket.name(),
        cli.organization_id,
        cli.environment_id,
    );
    Ok(())
}
