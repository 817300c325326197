//! The bearer token the agent injects, read from a file that rotates (projected
//! service-account tokens are replaced every hour or so, by an atomic symlink swap). Checked
//! per request with one `stat`, re-read only when the file changed: reading it per request
//! costs a blocking-pool round trip (`tokio::fs`) and three syscalls, the largest part of a
//! TLS upstream's per-request cost in S2. A missing file still fails the request at once (B18).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use http::HeaderValue;

use crate::file_version::FileVersion;

/// A token file and the `Authorization` value made of the last token read from it (built
/// once per read: cloning it per request is a reference count, not a copy).
pub(crate) struct TokenFile {
    path: PathBuf,
    cached: Mutex<Option<(FileVersion, HeaderValue)>>,
    /// Times the file was read (tests tell a cache hit from a re-read by it).
    reads: std::sync::atomic::AtomicU64,
}

impl TokenFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            cached: Mutex::new(None),
            reads: Default::default(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `Bearer <the current token, trimmed>`; an error says why there is none (missing,
    /// unreadable, empty, not a header value). The `stat` runs on the event loop: token files
    /// live on tmpfs (projected volumes) or a local disk, where it costs about a microsecond
    /// (docs/configuration.md asks for a local filesystem).
    pub(crate) async fn authorization(&self) -> Result<HeaderValue, String> {
        self.authorization_seen_at(SystemTime::now()).await
    }

    /// [`TokenFile::authorization`] with `now`, taken before the `stat`, deciding whether the
    /// file changed too recently for its version to vouch for the token (tests pass a later
    /// one, as if the file had aged).
    async fn authorization_seen_at(&self, now: SystemTime) -> Result<HeaderValue, String> {
        let version = FileVersion::stat(&self.path).map_err(|e| e.to_string())?;
        if let Some((cached_version, value)) = self.lock().as_ref() {
            if *cached_version == version {
                return Ok(value.clone());
            }
        }
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|e| e.to_string())?;
        let token = text.trim();
        if token.is_empty() {
            *self.lock() = None;
            return Err("empty".to_owned());
        }
        let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {token}")) else {
            *self.lock() = None;
            return Err("not a valid header value".to_owned());
        };
        value.set_sensitive(true);
        *self.lock() = version.settled(now).map(|version| (version, value.clone()));
        Ok(value)
    }

    #[cfg(test)]
    fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(FileVersion, HeaderValue)>> {
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::TokenFile;
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn dir(name: &str) -> Dir {
        let path = std::env::temp_dir().join(format!("token-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Dir(path)
    }

    /// Seen from here, a file written now has settled (its version may be cached).
    fn later() -> SystemTime {
        SystemTime::now() + Duration::from_secs(3)
    }

    /// Writes `text` in place and dates its modification `age` back.
    fn write_aged(path: &Path, text: &str, age: Duration) {
        std::fs::write(path, text).unwrap();
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
    }

    #[tokio::test]
    async fn a_cached_token_is_served_until_the_file_changes() {
        let dir = dir("cache");
        let path = dir.0.join("token");
        let file = TokenFile::new(path.clone());
        assert!(
            file.authorization_seen_at(later()).await.is_err(),
            "missing file"
        );
        write_aged(&path, "first\n", Duration::from_secs(60));
        assert_eq!(
            file.authorization_seen_at(later()).await.unwrap(),
            "Bearer first"
        );
        assert_eq!(
            file.authorization_seen_at(later()).await.unwrap(),
            "Bearer first"
        );
        assert_eq!(
            file.reads(),
            1,
            "the second request was served from the cache"
        );
        // Same length, mtime put back: the change time still tells.
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, "other\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        assert_eq!(
            file.authorization_seen_at(later()).await.unwrap(),
            "Bearer other"
        );
        // Just written: too recent to cache (a same-tick rewrite would look the same).
        std::fs::write(&path, "fresh\n").unwrap();
        assert_eq!(file.authorization().await.unwrap(), "Bearer fresh");
        assert_eq!(file.authorization().await.unwrap(), "Bearer fresh");
        assert_eq!(file.reads(), 4, "a racy version is re-read");
        write_aged(&path, "  \n", Duration::from_secs(60));
        assert_eq!(
            file.authorization_seen_at(later()).await.unwrap_err(),
            "empty"
        );
        write_aged(&path, "two\nlines\n", Duration::from_secs(60));
        assert_eq!(
            file.authorization_seen_at(later()).await.unwrap_err(),
            "not a valid header value"
        );
        write_aged(&path, "good\n", Duration::from_secs(60));
        let value = file.authorization_seen_at(later()).await.unwrap();
        assert_eq!(value, "Bearer good");
        assert!(value.is_sensitive());
    }

    /// B18: a cached token is never used once the file is gone.
    #[tokio::test]
    async fn a_removed_file_fails_even_with_a_cached_token() {
        let dir = dir("removed");
        let path = dir.0.join("token");
        write_aged(&path, "cached\n", Duration::from_secs(60));
        let file = TokenFile::new(path.clone());
        assert_eq!(file.authorization().await.unwrap(), "Bearer cached");
        std::fs::remove_file(&path).unwrap();
        assert!(file.authorization().await.is_err(), "removed file");
    }

    /// Rotation as kubelet does it: the path is a symlink repointed atomically.
    #[tokio::test]
    async fn a_repointed_symlink_is_a_new_token() {
        let dir = dir("symlink");
        for (sub, token) in [("d1", "one\n"), ("d2", "two\n")] {
            std::fs::create_dir_all(dir.0.join(sub)).unwrap();
            write_aged(
                &dir.0.join(sub).join("token"),
                token,
                Duration::from_secs(60),
            );
        }
        let path = dir.0.join("token");
        std::os::unix::fs::symlink(dir.0.join("d1/token"), &path).unwrap();
        let file = TokenFile::new(path.clone());
        assert_eq!(file.authorization().await.unwrap(), "Bearer one");
        let next = dir.0.join("token.next");
        std::os::unix::fs::symlink(dir.0.join("d2/token"), &next).unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(file.authorization().await.unwrap(), "Bearer two");
    }
}
