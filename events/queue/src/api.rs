//! How the APIs answer about the processed queue: a key that is not there (or not the caller's), a
//! deployment without a bucket, a bucket that cannot be reached.

use http_layer::ApiError;

use crate::{Bucket, BucketError};

/// The `404` of a key that is missing, malformed, or another organization's: all look the same.
pub fn not_found() -> ApiError {
    ApiError::NotFound {
        error: "Processed message not found".into(),
        details: "no processed message has this key in this organization".into(),
    }
}

/// The bucket, or `503` when this deployment has no processed queue.
pub fn configured(bucket: &Option<Bucket>) -> Result<&Bucket, ApiError> {
    bucket.as_ref().ok_or_else(|| {
        ApiError::Unavailable("the processed queue is not configured (S3_BUCKET is not set)".into())
    })
}

/// `503` for a bucket that cannot be reached; `502` for one that refused the request.
pub fn unavailable(error: BucketError) -> ApiError {
    tracing::warn!(error = %error, "processed queue bucket");
    match error {
        BucketError::Unavailable(_) => {
            ApiError::Unavailable("the object store is unavailable; retry later".into())
        }
        BucketError::Refused(message) => ApiError::BadGateway {
            error: "Object store error".into(),
            details: format!("the object store refused the request: {message}"),
        },
    }
}
