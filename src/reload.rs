//! Reload: what asks for one — SIGHUP, or a change in the config file or a file it names — and
//! the sd_notify sequence around it (`RELOADING=1` + `MONOTONIC_USEC`, then `READY=1` with the
//! outcome as `STATUS=`). What a reload changes is the server's or the agent's business.
//!
//! Files are polled by content, not watched with inotify: Kubernetes updates a mounted Secret
//! or ConfigMap by swapping a symlink of the directory, which a watch on the file never sees,
//! and editors replace files by rename. A poll is one `stat` per file; a file is read and
//! hashed only when its `stat` changed (the server's config at 10,000 clusters is a megabyte,
//! polled every 2 s), so a touch or a Secret resync with the same bytes is no reload.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::file_version::FileVersion;
pub use crate::file_version::Seen;

/// Why a reload happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// SIGHUP (`systemctl reload`).
    Signal,
    /// This file's content changed (or it appeared or vanished).
    Changed(PathBuf),
    /// The last reload failed; try again (a file it named may have appeared since: Kubernetes
    /// updates a ConfigMap and a Secret volume independently).
    Retry,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Signal => f.write_str("SIGHUP"),
            Cause::Changed(path) => write!(f, "{} changed", path.display()),
            Cause::Retry => f.write_str("retry after a failed reload"),
        }
    }
}

/// The outcome of a successful reload.
pub struct Applied {
    /// The `STATUS=` line to show.
    pub status: String,
    /// The files to watch from now on (the new config's).
    pub watched: Vec<PathBuf>,
    /// What the reload read of them (the config, token files): a change since is a change.
    pub seen: Vec<Seen>,
    /// The new poll interval (`None`: SIGHUP only).
    pub poll: Option<Duration>,
}

/// Waits for the next reload request.
pub struct Watch {
    hangup: Signal,
    files: Vec<Watched>,
    poll: Option<Duration>,
    /// The last reload failed: each poll tick retries until one succeeds.
    retry: bool,
}

impl Watch {
    /// Starts listening for SIGHUP (from now on SIGHUP no longer terminates the process) and
    /// remembers the content of `files`: as `seen` by the config load for the files it read,
    /// as they are now for the others.
    pub fn new(
        files: Vec<PathBuf>,
        seen: Vec<Seen>,
        poll: Option<Duration>,
    ) -> std::io::Result<Self> {
        let mut watch = Self {
            hangup: signal(SignalKind::hangup())?,
            files: Vec::new(),
            poll,
            retry: false,
        };
        watch.watch(files, seen, poll);
        Ok(watch)
    }

    /// Replaces the watched files and the poll interval. A file the reload read starts from
    /// what it `seen` (the running config was made of that content); one it did not read keeps
    /// what it was last seen as if it was watched before (a change that lands while a reload
    /// reads the files is still a change at the next poll), and is fingerprinted now if not (a
    /// certificate the reload named for the first time).
    pub fn watch(&mut self, files: Vec<PathBuf>, mut seen: Vec<Seen>, poll: Option<Duration>) {
        let mut before = std::mem::take(&mut self.files);
        self.files = files
            .into_iter()
            .map(|path| {
                if let Some(at) = seen.iter().position(|read| read.path == path) {
                    return Watched::from_seen(seen.swap_remove(at));
                }
                match before.iter().position(|file| file.path == path) {
                    Some(at) => before.swap_remove(at),
                    None => Watched::new(path),
                }
            })
            .collect();
        self.poll = poll;
    }

    /// The next reason to reload.
    pub async fn next(&mut self) -> Cause {
        loop {
            let tick = async {
                match self.poll {
                    Some(interval) => tokio::time::sleep(interval).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.hangup.recv() => return Cause::Signal,
                _ = tick => {}
            }
            for file in &mut self.files {
                if file.changed() {
                    return Cause::Changed(file.path.clone());
                }
            }
            if self.retry {
                return Cause::Retry;
            }
        }
    }
}

/// A watched file: its content's hash (`None`: missing or unreadable), and the version of the
/// file that content was read from, while that version can vouch for it.
struct Watched {
    path: PathBuf,
    version: Option<FileVersion>,
    print: Option<[u8; 32]>,
    /// Times the file was read (tests tell a `stat`-only poll from a read by it).
    reads: u64,
}

impl Watched {
    fn new(path: PathBuf) -> Self {
        let mut file = Self {
            path,
            version: None,
            print: None,
            reads: 0,
        };
        file.changed();
        file
    }

    fn from_seen(seen: Seen) -> Self {
        Self {
            path: seen.path,
            version: seen.version,
            print: Some(seen.digest),
            reads: 0,
        }
    }

    /// Whether the content changed since the last look; reads it only if the `stat` did.
    /// The `stat` comes first: a write between the two leaves a version older than the
    /// content, which the next poll reads again rather than missing.
    fn changed(&mut self) -> bool {
        self.changed_seen_at(SystemTime::now())
    }

    /// [`Watched::changed`] with `now`, taken before the `stat`, deciding whether the file
    /// changed too recently for its version to vouch for the content (tests pass a later one).
    fn changed_seen_at(&mut self, now: SystemTime) -> bool {
        let version = FileVersion::stat(&self.path).ok();
        if version.is_some() && version == self.version {
            return false;
        }
        self.reads += 1;
        let print = std::fs::read(&self.path)
            .ok()
            .map(|content| crate::file_version::digest(&content));
        // A failed read (too many open files, say) vouches for nothing.
        self.version = version
            .filter(|_| print.is_some())
            .and_then(|version| version.settled(now));
        let changed = print != self.print;
        self.print = print;
        changed
    }
}

/// Serves reload requests until `shutdown`: each sends `RELOADING=1`, runs `reload`, and sends
/// `READY=1` with the outcome. A failed reload keeps the running config and says why (log and
/// `STATUS=`), then is retried quietly on every poll tick — a file the new config names may
/// still be on its way — and reported again only when the reason changes or it succeeds.
pub async fn serve<R>(mut watch: Watch, mut reload: R, shutdown: CancellationToken)
where
    R: FnMut() -> Result<Applied, String>,
{
    let mut last_error: Option<String> = None;
    loop {
        let cause = tokio::select! {
            cause = watch.next() => cause,
            _ = shutdown.cancelled() => return,
        };
        let quiet = cause == Cause::Retry;
        if !quiet {
            crate::systemd::reloading();
            tracing::info!(%cause, "reloading the config");
        }
        match reload() {
            Ok(applied) => {
                if quiet {
                    // The retry worked: tell systemd a reload happened.
                    crate::systemd::reloading();
                }
                tracing::info!(status = %applied.status, %cause, "config reloaded");
                watch.retry = false;
                last_error = None;
                watch.watch(applied.watched, applied.seen, applied.poll);
                crate::systemd::ready(&applied.status);
            }
            Err(error) => {
                watch.retry = true;
                if !quiet || last_error.as_ref() != Some(&error) {
                    tracing::error!(%error, "reload failed; keeping the running config");
                    let status = format!("reload failed, keeping the running config: {error}");
                    if quiet {
                        crate::systemd::status(&status);
                    } else {
                        crate::systemd::ready(&status);
                    }
                }
                last_error = Some(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_changed_file_is_a_cause_and_an_unchanged_one_is_not() {
        let dir = std::env::temp_dir().join(format!("reload-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.toml"), dir.join("b.token"));
        std::fs::write(&a, "one").unwrap();
        std::fs::write(&b, "token").unwrap();
        let mut watch = Watch::new(
            vec![a.clone(), b.clone()],
            Vec::new(),
            Some(Duration::from_millis(10)),
        )
        .unwrap();
        // Rewriting the same bytes (a touch, a Secret resync) is not a change.
        std::fs::write(&a, "one").unwrap();
        std::fs::write(&b, "rotated").unwrap();
        let cause = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("the change is seen");
        assert_eq!(cause, Cause::Changed(b.clone()));
        // A vanished file is a change too; the next poll after that is quiet.
        std::fs::remove_file(&a).unwrap();
        let cause = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("the removal is seen");
        assert_eq!(cause, Cause::Changed(a));
        assert!(
            tokio::time::timeout(Duration::from_millis(100), watch.next())
                .await
                .is_err(),
            "nothing changed since"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A file that changes while a reload reads the files (after the poll that started it) is
    /// a change at the next poll: watching the reloaded config's files keeps what each file
    /// already watched was last seen as.
    #[tokio::test]
    async fn a_change_during_a_reload_is_seen_after_it() {
        let dir = std::env::temp_dir().join(format!("reload-during-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (config, token) = (dir.join("server.toml"), dir.join("new.token"));
        std::fs::write(&config, "one").unwrap();
        std::fs::write(&token, "token").unwrap();
        let poll = Some(Duration::from_millis(10));
        let mut watch = Watch::new(vec![config.clone()], Vec::new(), poll).unwrap();
        std::fs::write(&config, "two").unwrap();
        // The reload (which read "one") ends, and names one more file.
        watch.watch(vec![config.clone(), token], Vec::new(), poll);
        let cause = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("the change is seen");
        assert_eq!(cause, Cause::Changed(config));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The startup gap: a file that changes after the config load read it and before the
    /// watch first looks is a change at the first poll (a watch fingerprinting the files itself
    /// would take the new content as the running one, and never reload it).
    #[tokio::test]
    async fn a_change_between_the_load_and_the_watch_is_a_change() {
        let dir = std::env::temp_dir().join(format!("reload-gap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (config, token) = (dir.join("agent.toml"), dir.join("agent.token"));
        std::fs::write(&config, "one").unwrap();
        std::fs::write(&token, "token").unwrap();
        let (_, config_seen) = Seen::read(&config).unwrap();
        let (_, token_seen) = Seen::read(&token).unwrap();
        std::fs::write(&config, "two").unwrap();
        let poll = Some(Duration::from_millis(10));
        let files = vec![config.clone(), token.clone()];
        let mut watch = Watch::new(files.clone(), vec![config_seen, token_seen], poll).unwrap();
        let cause = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("the change is seen");
        assert_eq!(cause, Cause::Changed(config.clone()));
        // A reload that read the new content starts from it: no second reload for it.
        let (_, config_seen) = Seen::read(&config).unwrap();
        watch.watch(files, vec![config_seen], poll);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), watch.next())
                .await
                .is_err(),
            "nothing changed since the reload read the files"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A poll of a file that did not change is a `stat`, not a read; a rewrite in place, even
    /// with the same length and its modification time put back, is read and seen.
    #[tokio::test]
    async fn an_unchanged_file_is_not_read_again() {
        let dir = std::env::temp_dir().join(format!("reload-stat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("server.toml");
        std::fs::write(&path, "one").unwrap();
        // As if the file had aged: its version can vouch for what was read of it.
        let later = || SystemTime::now() + Duration::from_secs(3);
        let mut file = Watched::new(path.clone());
        assert!(!file.changed_seen_at(later()));
        assert_eq!(file.reads, 2, "just written: read again");
        for _ in 0..3 {
            assert!(!file.changed_seen_at(later()));
        }
        assert_eq!(file.reads, 2, "unchanged: stat only");
        // Same length, modification time put back: the change time still tells.
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, "two").unwrap();
        let handle = std::fs::File::options().write(true).open(&path).unwrap();
        handle.set_modified(modified).unwrap();
        assert!(file.changed_seen_at(later()), "the rewrite is seen");
        assert_eq!(file.reads, 3);
        assert!(!file.changed_seen_at(later()));
        // Just written (its change time is now, whatever its modification time says): the
        // version cannot vouch for the content, so the file is read at each poll.
        std::fs::write(&path, "six").unwrap();
        handle
            .set_modified(SystemTime::now() - Duration::from_secs(60))
            .unwrap();
        assert!(file.changed());
        assert!(!file.changed());
        assert_eq!(file.reads, 5, "a racy version is read again");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
