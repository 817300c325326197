//! The bearer token the agent injects, read from a file that rotates (projected
//! service-account tokens are replaced every hour or so, by an atomic symlink swap). Checked
//! per request with one `stat`, re-read only when the file changed: reading it per request
//! costs a blocking-pool round trip (`tokio::fs`) and three syscalls, the largest part of a
//! TLS upstream's per-request cost in S2. A missing file still fails the request at once (B18).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What identifies one version of the file: a rotation changes the inode (kubelet's symlink
/// swap, any write-and-rename) or the modification time or length (a rewrite in place; two
/// same-length rewrites within one timestamp tick, a few ms, would be missed).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Version {
    inode: u64,
    modified: Option<SystemTime>,
    len: u64,
}

impl Version {
    fn of(metadata: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            inode: metadata.ino(),
            modified: metadata.modified().ok(),
            len: metadata.len(),
        }
    }
}

/// A token file and the last token read from it.
pub(crate) struct TokenFile {
    path: PathBuf,
    cached: Mutex<Option<(Version, Arc<str>)>>,
}

impl TokenFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            cached: Mutex::new(None),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The current token, trimmed; an error says why there is none (missing, unreadable,
    /// empty). The `stat` runs on the event loop: token files live on tmpfs (projected
    /// volumes) or a local disk, where it costs about a microsecond.
    pub(crate) async fn current(&self) -> Result<Arc<str>, String> {
        let version = Version::of(&std::fs::metadata(&self.path).map_err(|e| e.to_string())?);
        if let Some((cached_version, token)) = self.lock().as_ref() {
            if *cached_version == version {
                return Ok(token.clone());
            }
        }
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|e| e.to_string())?;
        let token: Arc<str> = Arc::from(text.trim());
        if token.is_empty() {
            *self.lock() = None;
            return Err("empty".to_owned());
        }
        *self.lock() = Some((version, token.clone()));
        Ok(token)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Version, Arc<str>)>> {
        self.cached.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::TokenFile;

    #[tokio::test]
    async fn a_rotated_or_removed_file_is_seen_by_the_next_request() {
        let dir = std::env::temp_dir().join(format!("token-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let file = TokenFile::new(path.clone());
        assert!(file.current().await.is_err(), "missing file");
        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(&*file.current().await.unwrap(), "first");
        assert_eq!(&*file.current().await.unwrap(), "first", "cached");
        // Rotation by symlink swap, as kubelet does: a new inode, same length.
        let next = dir.join("token.next");
        std::fs::write(&next, "secnd\n").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(&*file.current().await.unwrap(), "secnd");
        std::fs::write(&path, "  \n").unwrap();
        assert_eq!(file.current().await.unwrap_err(), "empty");
        std::fs::remove_file(&path).unwrap();
        assert!(file.current().await.is_err(), "removed file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
