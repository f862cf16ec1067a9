//! Signal handlers from a fixed menu of async-signal-safe actions — set a
//! static flag, or write one byte to a pipe (the self-pipe trick) — so
//! that installing one is a safe call: the handler is this crate's, and it
//! does nothing a signal may not interrupt.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, Ordering};

use crate::cvt;

/// Slots per signal number (Linux has signals 1 to 64).
const NSIG: usize = 65;

/// Per signal: the flag its handler sets (null: none).
static FLAGS: [AtomicPtr<AtomicBool>; NSIG] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; NSIG];
/// Per signal: the fd its handler writes one byte to (-1: none).
static FDS: [AtomicI32; NSIG] = [const { AtomicI32::new(-1) }; NSIG];
/// Per signal: a second signal of the [`cancel_on`] set ends the process.
static CANCEL: [AtomicBool; NSIG] = [const { AtomicBool::new(false) }; NSIG];
/// Signals of the [`cancel_on`] set received so far.
static CANCELS: AtomicI32 = AtomicI32::new(0);
/// The first signal of the [`cancel_on`] set received (0: none yet).
static FIRST: AtomicI32 = AtomicI32::new(0);

extern "C" fn handler(sig: libc::c_int) {
    let Some(i) = usize::try_from(sig).ok().filter(|&i| i < NSIG) else {
        return;
    };
    if CANCEL[i].load(Ordering::Acquire) {
        if CANCELS.fetch_add(1, Ordering::SeqCst) >= 1 {
            // SAFETY: _exit(2) is async-signal-safe; the status follows the
            // shell's convention for a death by signal.
            unsafe { libc::_exit(128 + sig) };
        }
        FIRST.store(sig, Ordering::SeqCst);
    }
    let flag = FLAGS[i].load(Ordering::Acquire);
    if !flag.is_null() {
        // SAFETY: FLAGS only ever holds null or a `&'static AtomicBool`
        // (see `set_flag_on`), so the pointer is valid forever; a
        // lock-free atomic store is async-signal-safe.
        unsafe { &*flag }.store(true, Ordering::SeqCst);
    }
    let fd = FDS[i].load(Ordering::Acquire);
    if fd >= 0 {
        let b = 1u8;
        // SAFETY: errno is thread-local and `__errno_location` is valid
        // for the thread; write(2) is async-signal-safe and reads one byte
        // from a live local; FDS only ever holds fds borrowed for
        // `'static` (see `write_byte_on`), so `fd` is still open. A full
        // pipe just means a wake-up is already pending. The interrupted
        // code's errno is restored.
        unsafe {
            let errno = libc::__errno_location();
            let saved = *errno;
            libc::write(fd, (&b as *const u8).cast(), 1);
            *errno = saved;
        }
    }
}

fn slot(sig: libc::c_int) -> io::Result<usize> {
    usize::try_from(sig)
        .ok()
        .filter(|&i| (1..NSIG).contains(&i))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{sig} is not a signal number"),
            )
        })
}

/// Points `sig` at [`handler`] (`SA_RESTART`, empty mask).
fn install(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: sigaction is plain data and all-zero is valid; sigemptyset
    // initialises the mask in place; the handler installed is `handler`,
    // which only does async-signal-safe work on statics; sigaction reads
    // `sa`, which lives for the call, and we ask for no old action.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = libc::SA_RESTART;
        cvt(libc::sigaction(sig, &sa, std::ptr::null_mut()))?;
    }
    Ok(())
}

/// On each of `signals`, set `flag` (`SeqCst`). Replaces what those
/// signals did before, including a [`write_byte_on`] of them.
pub fn set_flag_on(signals: &[libc::c_int], flag: &'static AtomicBool) -> io::Result<()> {
    for &sig in signals {
        let i = slot(sig)?;
        FLAGS[i].store((flag as *const AtomicBool).cast_mut(), Ordering::Release);
        FDS[i].store(-1, Ordering::Release);
        CANCEL[i].store(false, Ordering::Release);
        install(sig)?;
    }
    Ok(())
}

/// On each of `signals`, write one byte to `fd` (typically the write end
/// of a non-blocking pipe that a poll loop watches). The fd is borrowed
/// for the rest of the process, so it can never be closed under the
/// handler. Replaces what those signals did before, including a
/// [`set_flag_on`] of them.
pub fn write_byte_on(signals: &[libc::c_int], fd: BorrowedFd<'static>) -> io::Result<()> {
    byte_on(signals, fd, false)
}

fn byte_on(signals: &[libc::c_int], fd: BorrowedFd<'static>, cancel: bool) -> io::Result<()> {
    for &sig in signals {
        let i = slot(sig)?;
        FLAGS[i].store(std::ptr::null_mut(), Ordering::Release);
        FDS[i].store(fd.as_raw_fd(), Ordering::Release);
        CANCEL[i].store(cancel, Ordering::Release);
        install(sig)?;
    }
    Ok(())
}

/// On each of `signals`, write one byte to `fd` the first time (as
/// [`write_byte_on`]) and end the process at once, with status 128 + the
/// signal number, the second time: the first Ctrl-C asks for a clean stop,
/// the second one insists. [`cancel_signal`] tells which signal came first.
pub fn cancel_on(signals: &[libc::c_int], fd: BorrowedFd<'static>) -> io::Result<()> {
    byte_on(signals, fd, true)
}

/// The first signal of a [`cancel_on`] set that arrived, if any.
pub fn cancel_signal() -> Option<libc::c_int> {
    match FIRST.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Sends `sig` to `child` (`kill(2)`; [`std::process::Child::kill`] only
/// sends `SIGKILL`). Call it before the child is waited for: after that
/// its pid may belong to another process.
pub fn kill(child: &std::process::Child, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill takes integers only.
    cvt(unsafe { libc::kill(pid, sig) })?;
    Ok(())
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of the CPU
/// times in `/proc/<pid>/stat`.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf takes an integer name only.
    let r = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if r > 0 {
        r as u64
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    // SIGUSR1/SIGUSR2 go to the whole test process; each test owns one.

    #[test]
    fn flag_is_set_by_its_signal() {
        static FLAG: AtomicBool = AtomicBool::new(false);
        set_flag_on(&[libc::SIGUSR1], &FLAG).unwrap();
        raise(libc::SIGUSR1);
        assert!(FLAG.load(Ordering::SeqCst));
        assert!(set_flag_on(&[0], &FLAG).is_err());
        assert!(set_flag_on(&[libc::SIGKILL], &FLAG).is_err());
    }

    #[test]
    fn byte_is_written_by_its_signal() {
        let (r, w) = crate::fd::pipe(libc::O_CLOEXEC | libc::O_NONBLOCK).unwrap();
        let w: &'static std::os::fd::OwnedFd = Box::leak(Box::new(w));
        write_byte_on(&[libc::SIGUSR2], w.as_fd()).unwrap();
        raise(libc::SIGUSR2);
        let mut p = [libc::pollfd {
            fd: r.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        assert_eq!(crate::fd::poll(&mut p, 1000).unwrap(), 1);
    }

    #[test]
    fn signals_reach_a_child() {
        let mut c = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        kill(&c, libc::SIGTERM).unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(c.wait().unwrap().signal(), Some(libc::SIGTERM));
        assert!(clock_ticks_per_second() > 0);
    }

    /// Sends `sig` to this thread and returns after its handler ran.
    fn raise(sig: libc::c_int) {
        // SAFETY: raise takes an integer; it returns after the handler.
        assert_eq!(unsafe { libc::raise(sig) }, 0);
    }
}
