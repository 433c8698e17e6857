//! S3 for the tests and the benchmark: a private moto server per test (`moto_server`, from PyPI's
//! `moto[server]`, which `deploy/lib.sh`'s `ensure_moto` installs; `MOTO_SERVER` overrides the
//! command), on its own port, killed when dropped, so a test can take it down without disturbing
//! others. moto keeps objects in memory only: a server started again is empty.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use processed_queue::{Bucket, S3Args};

/// The credentials every test bucket is reached with (moto accepts any).
const ACCESS_KEY: &str = "test";

/// The largest message body the test system reads (small, so that a test can pass it cheaply).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A moto S3 server on a local port.
pub struct S3Server {
    pub port: u16,
    process: Option<Child>,
}

impl S3Server {
    pub async fn start() -> S3Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("finding a free port")
            .port();
        let mut server = S3Server {
            port,
            process: None,
        };
        server.resume().await;
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The settings of a bucket named `bucket` on this server.
    pub fn args(&self, bucket: &str) -> S3Args {
        S3Args {
            bucket: Some(bucket.to_owned()),
            endpoint: Some(self.endpoint()),
            region: "us-east-1".into(),
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: ACCESS_KEY.into(),
            max_body_bytes: MAX_BODY_BYTES,
            timeout_secs: 5,
        }
    }

    /// A new, empty bucket on this server, with the settings that reach it.
    pub async fn new_bucket(&self) -> (S3Args, Bucket) {
        let name = format!("t{}", uuid::Uuid::new_v4().simple());
        let args = self.args(&name);
        let bucket = args.bucket().expect("a bucket is named");
        bucket.ensure_exists().await.expect("creating the bucket");
        (args, bucket)
    }

    /// Kills the server (SIGKILL, as an outage would). Its objects are lost.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts the server (again, empty) on its port and waits until it answers.
    pub async fn resume(&mut self) {
        assert!(self.process.is_none(), "the server is running");
        let moto = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let process = Command::new(&moto)
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {moto} (install it with `pip install 'moto[server]'`, as deploy/test.sh does): {e}")
            });
        self.process = Some(process);
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::Client::new();
        while client.get(self.endpoint()).send().await.is_err() {
            assert!(Instant::now() < deadline, "the S3 server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
