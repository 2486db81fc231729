//! The only module of the library allowed `unsafe`: thin wrappers over the libc calls
//! std does not offer (resource limits, signal masks, page size). Each returns `io::Result` and
//! each `unsafe` block says why it is sound.
#![allow(unsafe_code)]

use std::io;

/// Calls a libc function returning `-1` on error and turns that into `io::Error`.
macro_rules! syscall {
    ($e:expr) => {{
        let r = $e;
        if r == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    }};
}

/// (soft, hard) open-file limits of this process.
pub fn nofile_limits() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    syscall!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
    Ok((lim.rlim_cur as u64, lim.rlim_max as u64))
}

/// Raises the soft open-file limit to the hard limit; returns the new soft limit.
/// Servers and load tools call this first: the soft limit is often 1024.
pub fn raise_fd_limit() -> io::Result<u64> {
    let (soft, hard) = nofile_limits()?;
    if soft >= hard {
        return Ok(soft);
    }
    let lim = libc::rlimit {
        rlim_cur: hard as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: `lim` is a valid rlimit; setrlimit only reads it.
    syscall!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    Ok(hard)
}

/// Bytes per memory page.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// Resident set size of this process in bytes, from `/proc/self/statm` (0 if unavailable).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page_size())
}

fn shutdown_sigset() -> io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable sigset_t.
    syscall!(unsafe { libc::sigemptyset(&mut set) })?;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `set` was initialised by sigemptyset; `sig` is a valid signal number.
        syscall!(unsafe { libc::sigaddset(&mut set, sig) })?;
    }
    Ok(set)
}

/// Blocks SIGINT and SIGTERM in the calling thread and every thread it spawns later, so
/// that [`wait_shutdown_signal`] can take them synchronously. Call before starting workers.
pub fn block_shutdown_signals() -> io::Result<()> {
    let set = shutdown_sigset()?;
    // SAFETY: `set` is initialised; passing null for the old mask is allowed.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

/// Waits until SIGINT or SIGTERM arrives (they must be blocked, see
/// [`block_shutdown_signals`]); returns the signal number.
pub fn wait_shutdown_signal() -> io::Result<i32> {
    let set = shutdown_sigset()?;
    let mut sig: libc::c_int = 0;
    loop {
        // SAFETY: `set` is initialised and `sig` is a valid out-pointer.
        let r = unsafe { libc::sigwait(&set, &mut sig) };
        match r {
            0 => return Ok(sig),
            libc::EINTR => continue,
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_rss_are_readable() {
        let (soft, hard) = nofile_limits().unwrap();
        assert!(soft <= hard);
        assert_eq!(raise_fd_limit().unwrap(), hard);
        assert!(rss_bytes() > 0);
        assert!(page_size().is_power_of_two());
    }
}
