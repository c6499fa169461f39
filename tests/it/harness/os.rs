//! What a test holds of the machine: child processes killed when dropped, a temporary directory
//! removed when dropped, free ports, and names no other test picks.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    time::Instant,
};

/// A child process of the test's; killed when dropped, so that a failing test leaves none
/// behind.
pub struct Process(Child);

/// A directory of a test's own under the system's temporary directory, removed when dropped.
pub struct TempDir(PathBuf);

impl Process {
    pub fn spawn(command: &mut Command) -> Self {
        let program = command.get_program().to_string_lossy().into_owned();
        Self(
            command
                .spawn()
                .unwrap_or_else(|error| panic!("{program} runs (see README): {error}")),
        )
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// The process, for taking its pipes.
    pub fn child(&mut self) -> &mut Child {
        &mut self.0
    }

    /// Whether it has exited (and been reaped).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(Some(_)))
    }

    /// Sends it `signal` (a name such as "STOP" or "TERM"), as `kill` does.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {}", self.id());
    }

    /// Kills it, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Waits for it to exit.
    pub fn wait(&mut self) -> ExitStatus {
        self.0.wait().expect("the process can be waited for")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Only a process not reaped yet still owns its pid; a stopped one is resumed first.
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill")
                .args(["-CONT", &self.id().to_string()])
                .status();
            self.kill();
        }
    }
}

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{prefix}-{:08x}", rand_u32()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// A number no other test of this run is likely to pick, for names of the test's own.
pub fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) as u32
}
