//! A file's version as `stat` tells it, so a file polled for changes (the config, a token file)
//! is read only when it may have changed: one `stat` instead of a read and a hash (the server's
//! config at 10,000 clusters is a megabyte, polled every 2 s).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

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

/// How long after its last change a version still cannot vouch for the content read of it.
/// Timestamps tick every few milliseconds on most Linux filesystems, but every second on some
/// (ext4 with 128-byte inodes, ext3, FAT, some NFS and overlay setups): there, a file written
/// at 12:00:00.05 is stamped 12:00:00, and a same-length rewrite within that second would look
/// identical. Two seconds covers that; a poll every 2 s then reads a changed file once more.
const RACY_WINDOW: Duration = Duration::from_secs(2);

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

    /// Changed so recently (seen from `now`, taken before the `stat`) that a second
    /// same-length write within the same timestamp tick would look identical (git's "racy"
    /// case): what was read of such a version must be read again next time.
    pub(crate) fn is_racy(&self, now: SystemTime) -> bool {
        let changed = u64::try_from(self.changed.0).ok().map(|secs| {
            SystemTime::UNIX_EPOCH
                + Duration::new(secs, self.changed.1.clamp(0, 999_999_999) as u32)
        });
        let latest = self.modified.max(changed);
        latest
            .and_then(|latest| now.duration_since(latest).ok())
            .is_none_or(|age| age < RACY_WINDOW)
    }

    /// This version, if what is read of it may be trusted to it later (`now` as for
    /// [`FileVersion::is_racy`]).
    pub(crate) fn settled(self, now: SystemTime) -> Option<Self> {
        (!self.is_racy(now)).then_some(self)
    }
}

/// What a reader saw of a watched file: its content's SHA-256, and the version `stat` gave just
/// before the read (while that version can vouch for the content). A reload watch starts from
/// what the config load saw, not from a look of its own afterwards: a change that lands between
/// the two (a Secret rotated while the process starts) is then still a change.
#[derive(Clone, PartialEq, Eq)]
pub struct Seen {
    pub(crate) path: PathBuf,
    pub(crate) version: Option<FileVersion>,
    pub(crate) digest: [u8; 32],
}

impl Seen {
    /// Reads all of `path` and what it saw. The `stat` comes first: a write between the two
    /// leaves a version older than the content, which the watch reads again rather than trusts.
    pub(crate) fn read(path: &Path) -> std::io::Result<(Vec<u8>, Seen)> {
        let now = SystemTime::now();
        let version = FileVersion::stat(path).ok();
        let content = std::fs::read(path)?;
        let seen = Seen {
            path: path.to_owned(),
            version: version.and_then(|version| version.settled(now)),
            digest: digest(&content),
        };
        Ok((content, seen))
    }
}

/// The path only: a token file's digest is no one's business in a config dump.
impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seen")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The fingerprint a watch compares contents by.
pub(crate) fn digest(content: &[u8]) -> [u8; 32] {
    Sha256::digest(content).into()
}
