//! Files jobd reads again while it runs: the auth file, and the TLS certificate, key and
//! client CAs. Kubernetes updates a mounted Secret by swapping a symlink, which file-change
//! notifications do not report reliably, so each file is read again every `RELOAD_INTERVAL`
//! and compared with what was last read.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

/// How often the files are read again: a change is in force within this long (plus the time
/// to apply it).
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// A set of files read together, with what was read of them last.
pub struct WatchedFiles {
    what: &'static str,
    paths: Vec<PathBuf>,
    seen: Vec<Vec<u8>>,
}

impl WatchedFiles {
    /// Reads `paths` now; `what` names them in logs ("auth file", "TLS files").
    pub fn read(what: &'static str, paths: Vec<PathBuf>) -> Result<(Self, Vec<Vec<u8>>), String> {
        let seen = paths
            .iter()
            .map(|path| read(path))
            .collect::<Result<Vec<_>, _>>()?;
        let files = Self {
            what,
            paths,
            seen: seen.clone(),
        };
        Ok((files, seen))
    }

    /// Until `stop`, reads the files every `RELOAD_INTERVAL`; when one changed and all could
    /// be read, hands their contents to `apply`. What `apply` refuses is logged, and the
    /// version in force stays so until the files change again.
    pub async fn follow(
        mut self,
        mut apply: impl FnMut(&[Vec<u8>]) -> Result<(), String> + Send,
        stop: CancellationToken,
    ) {
        let mut unreadable = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RELOAD_INTERVAL) => {}
            }
            let contents = match read_all(&self.paths).await {
                Ok(contents) => contents,
                Err(error) => {
                    // Said once, not every second; a Secret being swapped is briefly absent.
                    if !unreadable {
                        tracing::warn!(
                            error,
                            "cannot read the {}; keeping the version in force",
                            self.what
                        );
                    }
                    unreadable = true;
                    continue;
                }
            };
            unreadable = false;
            if contents == self.seen {
                continue;
            }
            let files = self.paths.iter().map(|path| path.display().to_string());
            let files = files.collect::<Vec<_>>().join(", ");
            match apply(&contents) {
                Ok(()) => {
                    tracing::info!(files, "{} changed; the new version is in force", self.what)
                }
                Err(error) => tracing::error!(
                    files,
                    error,
                    "the {} changed but cannot be used; keeping the version in force",
                    self.what
                ),
            }
            self.seen = contents;
        }
    }
}

/// Reads the files off the async workers: a stuck file system must not stall calls.
async fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, String> {
    let mut contents = Vec::with_capacity(paths.len());
    for path in paths {
        let read = tokio::fs::read(path).await;
        contents.push(read.map_err(|error| format!("{}: {error}", path.display()))?);
    }
    Ok(contents)
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|error| format!("{}: {error}", path.display()))
}
