//! The processed queue's S3 bucket, through aws-sdk-s3: its configuration (the SDK's standard
//! variables plus `S3_ENDPOINT` and `S3_BUCKET`, path-style addressing), and the few calls the
//! platform makes: list a prefix after a key, read an object up to a size limit, check that objects
//! exist, delete objects, and (for the local stack's producer and the tests) create the bucket and
//! put objects.
//!
//! Every failure is one of two kinds: S3 answered with an error ([`BucketError::Refused`]), or it
//! could not be reached in time ([`BucketError::Unavailable`]), which the APIs answer with `503`.

use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};

/// The most keys one DeleteObjects call takes (S3's limit).
pub const DELETE_BATCH: usize = 1_000;

/// How many existence checks run at once.
const HEAD_CONCURRENCY: usize = 32;

/// Where the processed queue lives. Unset `S3_BUCKET`: the service runs without the processed queue.
#[derive(clap::Args, Debug, Clone)]
pub struct S3Args {
    /// The bucket holding processed messages; unset: no processed queue.
    #[arg(long = "s3-bucket", env = "S3_BUCKET")]
    pub bucket: Option<String>,
    /// The S3 endpoint (`http://127.0.0.1:9000` for a local server); unset: AWS's for the region.
    #[arg(long = "s3-endpoint", env = "S3_ENDPOINT")]
    pub endpoint: Option<String>,
    #[arg(long = "aws-region", env = "AWS_REGION", default_value = "us-east-1")]
    pub region: String,
    #[arg(
        long = "aws-access-key-id",
        env = "AWS_ACCESS_KEY_ID",
        default_value = ""
    )]
    pub access_key_id: String,
    #[arg(
        long = "aws-secret-access-key",
        env = "AWS_SECRET_ACCESS_KEY",
        default_value = "",
        hide_env_values = true
    )]
    pub secret_access_key: String,
    /// The largest object body read: larger objects are listed, but their bodies are not shown.
    #[arg(
        long = "processed-message-max-bytes",
        env = "PROCESSED_MESSAGE_MAX_BYTES",
        default_value = "1048576"
    )]
    pub max_body_bytes: usize,
    /// How long one S3 call may take, retries included, in seconds.
    #[arg(
        long = "s3-timeout-secs",
        env = "S3_TIMEOUT_SECS",
        default_value = "10"
    )]
    pub timeout_secs: u64,
}

impl S3Args {
    /// The bucket these arguments name, if any.
    pub fn bucket(&self) -> Option<Bucket> {
        self.bucket.as_ref().map(|name| Bucket::new(self, name))
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BucketError {
    /// S3 could not be reached, or did not answer in time.
    #[error("the object store is unavailable: {0}")]
    Unavailable(String),
    /// S3 answered with an error.
    #[error("the object store refused the request: {0}")]
    Refused(String),
}

impl<E, R> From<SdkError<E, R>> for BucketError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    fn from(error: SdkError<E, R>) -> Self {
        match &error {
            SdkError::ServiceError(service) => {
                let error = service.err();
                BucketError::Refused(format!(
                    "{}: {}",
                    error.code().unwrap_or("unknown error"),
                    error.message().unwrap_or("no message")
                ))
            }
            _ => {
                BucketError::Unavailable(aws_sdk_s3::error::DisplayErrorContext(&error).to_string())
            }
        }
    }
}

/// One object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub last_modified: DateTime<Utc>,
    pub size: i64,
}

/// One page of a listing, and whether more follow.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub objects: Vec<Listed>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<String>,
}

/// An object's body, read up to a limit.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// At most the limit's bytes.
    pub body: Vec<u8>,
    /// The whole object's size.
    pub size: i64,
    /// Whether the object is larger than the limit (then `body` is empty).
    pub too_large: bool,
    pub last_modified: Option<DateTime<Utc>>,
}

/// What a deletion did to each key.
#[derive(Debug, Clone, Default)]
pub struct Deleted {
    pub deleted: Vec<String>,
    pub errors: Vec<(String, String)>,
}

/// A bucket and the client that reaches it.
#[derive(Clone, Debug)]
pub struct Bucket {
    client: Client,
    name: String,
}

impl Bucket {
    pub fn new(args: &S3Args, name: &str) -> Bucket {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let timeout = Duration::from_secs(args.timeout_secs.max(1));
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(args.region.clone()))
            .credentials_provider(Credentials::new(
                &args.access_key_id,
                &args.secret_access_key,
                None,
                None,
                "environment",
            ))
            .force_path_style(true)
            .http_client(http)
            .retry_config(RetryConfig::standard().with_max_attempts(2))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2).min(timeout))
                    .operation_timeout(timeout)
                    .build(),
            );
        if let Some(endpoint) = &args.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Bucket {
            client: Client::from_conf(config.build()),
            name: name.to_owned(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Up to `max_keys` objects under `prefix`, in key order: after `start_after`, or where `page`
    /// (a previous page's `next`) says.
    pub async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        page: Option<String>,
        max_keys: i32,
    ) -> Result<ListPage, BucketError> {
        let output = self
            .client
            .list_objects_v2()
            .bucket(&self.name)
            .prefix(prefix)
            .set_start_after(start_after.map(str::to_owned))
            .set_continuation_token(page)
            .max_keys(max_keys)
            .send()
            .await?;
        let objects = output
            .contents()
            .iter()
            .filter_map(|object| {
                Some(Listed {
                    key: object.key()?.to_owned(),
                    last_modified: object.last_modified().and_then(to_chrono)?,
                    size: object.size().unwrap_or(0),
                })
            })
            .collect();
        let next = match output.is_truncated() {
            Some(true) => output.next_continuation_token().map(str::to_owned),
            _ => None,
        };
        Ok(ListPage { objects, next })
    }

    /// The object under `key`, read as it streams in and no further than `limit` bytes; `None` when
    /// there is no such object.
    pub async fn get(&self, key: &str, limit: usize) -> Result<Option<Fetched>, BucketError> {
        let output = match self
            .client
            .get_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
        {
            Ok(output) => output,
            Err(error) if is_not_found(&error) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let size = output.content_length().unwrap_or(0);
        let last_modified = output.last_modified().and_then(to_chrono);
        if size as u64 > limit as u64 {
            return Ok(Some(Fetched {
                body: Vec::new(),
                size,
                too_large: true,
                last_modified,
            }));
        }
        let mut body = Vec::with_capacity(size.max(0) as usize);
        let mut stream = output.body;
        while let Some(chunk) = stream
            .try_next()
            .await
            .map_err(|e| BucketError::Unavailable(format!("reading {key}: {e}")))?
        {
            if body.len() + chunk.len() > limit {
                return Ok(Some(Fetched {
                    body: Vec::new(),
                    size: size.max((body.len() + chunk.len()) as i64),
                    too_large: true,
                    last_modified,
                }));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(Fetched {
            body,
            size,
            too_large: false,
            last_modified,
        }))
    }

    /// Which of `keys` name an object, in their order.
    pub async fn exist(&self, keys: &[String]) -> Result<Vec<bool>, BucketError> {
        // Each future owns its request: futures that borrow a key are not `Send` for every
        // lifetime, which an axum handler needs.
        stream::iter(keys.to_vec())
            .map(|key| {
                let request = self.client.head_object().bucket(&self.name).key(key);
                async move {
                    match request.send().await {
                        Ok(_) => Ok(true),
                        Err(error) if is_not_found(&error) => Ok(false),
                        Err(error) => Err(BucketError::from(error)),
                    }
                }
            })
            .buffered(HEAD_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Deletes `keys`, [`DELETE_BATCH`] per call. A key with no object counts as deleted, as S3 has it.
    pub async fn delete(&self, keys: &[String]) -> Result<Deleted, BucketError> {
        let mut result = Deleted::default();
        for batch in keys.chunks(DELETE_BATCH) {
            let objects = batch
                .iter()
                .map(|key| ObjectIdentifier::builder().key(key).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| BucketError::Refused(e.to_string()))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .build()
                .map_err(|e| BucketError::Refused(e.to_string()))?;
            let output = self
                .client
                .delete_objects()
                .bucket(&self.name)
                .delete(delete)
                .send()
                .await?;
            let failed: Vec<(String, String)> = output
                .errors()
                .iter()
                .map(|e| {
                    (
                        e.key().unwrap_or_default().to_owned(),
                        format!(
                            "{}: {}",
                            e.code().unwrap_or("error"),
                            e.message().unwrap_or("not deleted")
                        ),
                    )
                })
                .collect();
            result.deleted.extend(
                batch
                    .iter()
                    .filter(|key| !failed.iter().any(|(failed, _)| failed == *key))
                    .cloned(),
            );
            result.errors.extend(failed);
        }
        Ok(result)
    }

    /// Stores `body` under `key`.
    pub async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), BucketError> {
        self.client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await?;
        Ok(())
    }

    /// Creates the bucket unless it exists.
    pub async fn ensure_exists(&self) -> Result<(), BucketError> {
        match self.client.head_bucket().bucket(&self.name).send().await {
            Ok(_) => return Ok(()),
            Err(error) if is_not_found(&error) => {}
            Err(error) => return Err(error.into()),
        }
        match self.client.create_bucket().bucket(&self.name).send().await {
            Ok(_) => Ok(()),
            Err(error)
                if matches!(
                    error.as_service_error().and_then(|e| e.code()),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) =>
            {
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }
}

/// S3 answered that the object (or, to `HEAD` of a bucket, the bucket) does not exist: `NoSuchKey`,
/// or a bare `404` to a `HEAD`.
fn is_not_found<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> bool {
    match error {
        SdkError::ServiceError(service) => {
            let code = service.err().code();
            code != Some("NoSuchBucket")
                && (matches!(code, Some("NoSuchKey" | "NotFound"))
                    || service.raw().status().as_u16() == 404)
        }
        _ => false,
    }
}

fn to_chrono(time: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(time.secs(), time.subsec_nanos())
}
