//! What the binaries ask of the host through raw syscalls (rustix, no `unsafe`): a
//! file-descriptor soft limit big enough for thousands of connections, the monotonic clock
//! that sd_notify's `MONOTONIC_USEC` is read from, and random bytes for new tokens.

use rustix::process::{getrlimit, setrlimit, Resource};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (systemd and most shells start services
/// at a soft 1024, which a server with thousands of agents or streams would hit). Returns the
/// limit now in force, or why it could not be raised.
pub fn raise_nofile_limit() -> Result<u64, String> {
    let mut limit = getrlimit(Resource::Nofile);
    let Some(hard) = limit.maximum else {
        // Unlimited hard limit: the kernel still caps at fs.nr_open; ask for that.
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(1 << 20);
        limit.current = Some(nr_open);
        setrlimit(Resource::Nofile, limit)
            .map_err(|error| format!("setrlimit(NOFILE, {nr_open}): {error}"))?;
        return Ok(nr_open);
    };
    if limit.current == Some(hard) {
        return Ok(hard);
    }
    limit.current = Some(hard);
    setrlimit(Resource::Nofile, limit)
        .map_err(|error| format!("setrlimit(NOFILE, {hard}): {error}"))?;
    Ok(hard)
}

/// `n` bytes from the kernel's CSPRNG (`getrandom(2)`, blocking only before the pool is
/// initialised at boot).
pub fn random_bytes(n: usize) -> std::io::Result<Vec<u8>> {
    let mut buffer = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        filled +=
            rustix::rand::getrandom(&mut buffer[filled..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(buffer)
}

/// `CLOCK_MONOTONIC` in microseconds, as systemd wants it next to `RELOADING=1`.
pub fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_limit_ends_at_the_hard_limit() {
        let raised = raise_nofile_limit().expect("raise");
        let limit = getrlimit(Resource::Nofile);
        assert_eq!(limit.current, Some(raised));
        if let Some(hard) = limit.maximum {
            assert_eq!(raised, hard);
        }
    }

    #[test]
    fn random_bytes_differ_and_fill_the_buffer() {
        let (a, b) = (random_bytes(32).unwrap(), random_bytes(32).unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn monotonic_clock_moves_forward_in_microseconds() {
        let first = monotonic_usec();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = monotonic_usec();
        assert!(second >= first + 2_000, "{first} → {second}");
        // Since boot, not since 1970: far below a wall-clock value in µs.
        assert!(first < 1_000_000_000_000_000, "{first}");
    }
}
