//! The real service binaries (command-api, query-api, projector) started as processes against a test
//! database, for what only a process shows: signals, exit statuses, configuration from the
//! environment. They are not built by `cargo test`: `deploy/test.sh` builds them first, and they are
//! found in the target directory the test executable runs from.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use commands::secrets::Secrets;

use crate::issuer::{self, Issuer};
use crate::{TestDb, AUDIENCE, SYSTEM_ADMIN};

/// The path of a workspace binary, next to the test executable's `deps` directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable lives in <target>/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins --locked` \
         (deploy/test.sh does)",
        path.display()
    );
    path
}

/// A local address nobody listens on right now.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free local port")
}

/// The environment of the whole system over one test database and issuer, as README lists it.
pub struct Stack {
    pub command_addr: SocketAddr,
    pub query_addr: SocketAddr,
    pub mcp_addr: SocketAddr,
    pub projector_addr: SocketAddr,
    env: Vec<(String, String)>,
}

impl Stack {
    pub fn new(db: &TestDb, issuer: &Issuer) -> Self {
        let (command_addr, query_addr, mcp_addr, projector_addr) =
            (free_addr(), free_addr(), free_addr(), free_addr());
        let env = [
            ("DATABASE_URL", db.url()),
            ("COMMAND_API_ADDR", command_addr.to_string()),
            ("QUERY_API_ADDR", query_addr.to_string()),
            ("MCP_API_ADDR", mcp_addr.to_string()),
            ("PROJECTOR_ADDR", projector_addr.to_string()),
            ("AUTH_ISSUER", issuer.url.clone()),
            ("AUTH_AUDIENCE", AUDIENCE.into()),
            ("SYSTEM_ADMINS", SYSTEM_ADMIN.into()),
            ("SECRETS_KEY", Secrets::generate_key()),
            ("AUTH_CLIENT_ID", issuer::CLIENT_ID.into()),
            ("AUTH_CLIENT_SECRET", issuer::CLIENT_SECRET.into()),
            ("PUBLIC_URL", format!("http://{command_addr}")),
            ("RUST_LOG", "info".into()),
        ];
        Stack {
            command_addr,
            query_addr,
            mcp_addr,
            projector_addr,
            env: env.map(|(k, v)| (k.to_owned(), v)).to_vec(),
        }
    }

    /// Sets (or overrides) a variable for the processes started after this.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_owned(), value.into()));
    }

    pub async fn command_api(&self) -> Service {
        Service::start(self, "command-api", self.command_addr).await
    }

    pub async fn query_api(&self) -> Service {
        Service::start(self, "query-api", self.query_addr).await
    }

    pub async fn mcp_api(&self) -> Service {
        Service::start(self, "mcp-api", self.mcp_addr).await
    }

    pub async fn projector(&self) -> Service {
        Service::start(self, "projector", self.projector_addr).await
    }

    /// Runs `projector <args>` to its end; its status and output.
    pub async fn projector_command(&self, args: &[&str]) -> std::process::Output {
        let mut command = tokio::process::Command::new(binary("projector"));
        command.args(args).env_remove("KAFKA_BROKERS");
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command.output().await.expect("running the projector")
    }
}

/// A running service process, killed when dropped.
pub struct Service {
    child: Child,
    pub name: &'static str,
    pub url: String,
    log: PathBuf,
}

impl Service {
    /// Starts the binary and waits until its `/healthz` answers.
    pub async fn start(stack: &Stack, name: &'static str, addr: SocketAddr) -> Self {
        let log = std::env::temp_dir().join(format!("{name}-{}.log", uuid::Uuid::new_v4()));
        let output = std::fs::File::create(&log).expect("creating the log file");
        let child = Command::new(binary(name))
            .env_remove("KAFKA_BROKERS")
            .envs(stack.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("a second handle of the log file"))
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let mut service = Service {
            child,
            name,
            url: format!("http://{addr}"),
            log,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = service.child.try_wait().expect("polling the child") {
                panic!("{name} exited with {status}:\n{}", service.output());
            }
            let healthy = http.get(format!("{}/healthz", service.url)).send().await;
            if healthy.is_ok_and(|r| r.status().is_success()) {
                return service;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not answer /healthz:\n{}",
                service.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("polling the child").is_none()
    }

    /// Waits for the process to exit, failing the test if it takes longer than `within`.
    pub async fn exit_status(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still runs {within:?} later:\n{}",
                self.name,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the process wrote to standard output and error so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
