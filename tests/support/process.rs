//! `lambda` subcommands as real child processes, for tests that crash or freeze them with signals.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

pub use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// One `lambda <role>` process, restartable; its stderr (the log) goes to `<dir>/<name>.log`.
pub struct Process {
    pub role: Vec<String>,
    pub child: Option<Child>,
    config: PathBuf,
    pub log: PathBuf,
    pub starts: usize,
}

impl Process {
    /// `role` is the subcommand and its arguments, e.g. `["speed"]` or `["batch", "run"]`.
    pub fn new(name: &str, role: &[&str], config: &Path, dir: &Path) -> Self {
        Process {
            role: role.iter().map(|s| s.to_string()).collect(),
            child: None,
            config: config.to_owned(),
            log: dir.join(format!("{name}.log")),
            starts: 0,
        }
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_lambda"))
            .args(["--config", self.config.to_str().unwrap(), "--log", "info,librdkafka=error"])
            .args(&self.role)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.starts += 1;
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The log written so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (e.g. `Signal::SIGSTOP`, `Signal::SIGCONT`).
    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.pid()).expect("pid fits"));
        nix::sys::signal::kill(pid, signal).unwrap_or_else(|e| panic!("kill -{signal} {pid}: {e}"));
    }

    /// SIGKILL: no destructor, no flush, no commit, no LeaveGroup. Panics if the process already exited.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!("{:?} exited by itself ({status}); log:\n{}", self.role, self.log_text());
            }
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM (graceful shutdown: flush, leave the group) and waits up to `timeout` for the exit status;
    /// panics if it does not exit in time.
    pub fn terminate(&mut self, timeout: std::time::Duration) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        let mut child = self.child.take().expect("running");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "{:?} ignored SIGTERM for {timeout:?}", self.role);
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Panics, with its log, if the process has exited by itself (a layer must ride out every fault).
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!("{:?} exited by itself ({status}); log:\n{}", self.role, self.log_text());
            }
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.take().expect("running").wait().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGCONT);
                // a stopped child cannot die
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
