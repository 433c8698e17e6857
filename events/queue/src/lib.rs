//! The processed queue's storage, shared by the services that touch it: the S3 bucket the workflow
//! runtime writes processed messages into ([`bucket`]), the PostgreSQL index of its keys that lists
//! and counts read ([`index`]), and how the APIs answer about them ([`api`]). What a key or an object
//! means is the domain's (`domain::processed_queue`); the indexer that keeps the index is the
//! projector's.

pub mod api;
pub mod bucket;
pub mod index;

pub use bucket::{Bucket, BucketError, S3Args};
