//! A real Kafka-protocol broker as its own process: tansu (Apache-2.0, `cargo install tansu --features
//! libsql`) with its SQLite storage in a test directory, so records and committed offsets survive a
//! SIGKILL and restart of the broker. Found at `LAMBDA_TEST_TANSU`, `~/.cache/tansu/bin/tansu` (where
//! `.ci/run` installs it) or on `PATH`; without it a test prints one SKIPPED line and passes, unless
//! `LAMBDA_REQUIRE_TANSU=1` (CI) makes that a failure.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
    pub log: PathBuf,
    pub starts: usize,
}

impl Broker {
    /// A broker with its storage under `dir`, started, on a free loopback port; `None` (after a SKIPPED
    /// line naming `test`) when no tansu binary is found and `LAMBDA_REQUIRE_TANSU` is not `1`.
    pub fn start_in(dir: &Path, test: &str) -> Option<Broker> {
        let bin = super::external_tool(
            "LAMBDA_TEST_TANSU",
            "LAMBDA_REQUIRE_TANSU",
            &super::tool_candidates(".cache/tansu/bin/tansu", "tansu"),
            test,
            "no tansu broker: cargo install tansu --features libsql, or set LAMBDA_TEST_TANSU",
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut broker = Broker { bin, dir: dir.to_owned(), port, child: None, log: dir.join("tansu.log"), starts: 0 };
        broker.start();
        Some(broker)
    }

    /// `bootstrap.servers` for the clients.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker process and waits (up to 20 s) until it accepts connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.bin)
            .current_dir(&self.dir)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"])
            // the group coordinator's joins and evictions, to read a rebalance after the fact
            .env("RUST_LOG", "warn,tansu_broker::coordinator::group=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.child = Some(child);
        self.starts += 1;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {}: {}", self.port, self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the broker dies wherever it is; its SQLite storage keeps what it committed.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!("tansu exited by itself ({status}); log:\n{}", self.log_text());
            }
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// The running broker's process id (`None` while it is down).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Creates `topic` with `partitions` partitions (replication factor 1) through the admin API.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            rdkafka::ClientConfig::new().set("bootstrap.servers", self.brokers()).create().unwrap();
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let results = admin.create_topics([&new], &AdminOptions::new()).await.unwrap();
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
