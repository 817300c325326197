//! A file's version as `stat` tells it, so a file polled for changes (the config, a token file)
//! is read only when it may have changed: one `stat` instead of a read and a hash (the server's
//! config at 10,000 clusters is a megabyte, polled every 2 s).

use std::path::Path;
use std::time::{Duration, SystemTime};

/// What identifies one version of a file: a rotation changes the device and inode (kubelet's
/// symlink swap, any write-and-rename; `stat` follows the symlink), a rewrite in place the
/// modification time or length, a `chmod` the change time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct FileVersion {
    device: u64,
    inode: u64,
    modified: Option<SystemTime>,
    changed: (i64, i64),
    len: u64,
}

/// Timestamp ticks are a few milliseconds on Linux filesystems.
const RACY_WINDOW: Duration = Duration::from_millis(50);

impl FileVersion {
    pub(crate) fn of(metadata: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            device: metadata.dev(),
            inode: metadata.ino(),
            modified: metadata.modified().ok(),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
            len: metadata.len(),
        }
    }

    /// The version of the file at `path` now, following symlinks.
    pub(crate) fn stat(path: &Path) -> std::io::Result<Self> {
        std::fs::metadata(path).map(|metadata| Self::of(&metadata))
    }

    /// Changed so recently that a second same-length write within the same timestamp tick
    /// would look identical (git's "racy" case): what was read of such a version must be read
    /// again next time, not trusted to this version.
    pub(crate) fn is_racy(&self) -> bool {
        self.modified
            .and_then(|modified| SystemTime::now().duration_since(modified).ok())
            .is_none_or(|age| age < RACY_WINDOW)
    }

    /// This version, if what is read of it may be trusted to it later.
    pub(crate) fn settled(self) -> Option<Self> {
        (!self.is_racy()).then_some(self)
    }
}
