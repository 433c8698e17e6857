//! The tests that hold PostgreSQL transactions open: a slow commit the log's readers must wait for,
//! writes blocked behind a lock while a service shuts down or times out, and the Kafka tests, whose
//! tansu brokers keep their storage in the same server. A transaction that
//! has written anything holds back every log reader on the whole server (transaction ids are
//! server-wide; see `events::store`), so run beside the other tests these would stall their
//! projections. Cargo runs test binaries one after another: here they stall only each other, which
//! they are written to expect. Run one area with `cargo test -p tests --test holds_transactions <module>::`.

mod event_log;
mod kafka;
mod shutdown;
mod timeouts;
