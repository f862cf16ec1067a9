//! `AF_UNIX` stream sockets: messages with file descriptors attached
//! (`SCM_RIGHTS`), the send buffer, and a listening socket built step by
//! step.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::cvt;

/// Most fds the kernel lets one message carry (`SCM_MAX_FD`).
pub const SCM_MAX_FD: usize = 253;

/// Control buffer for sending: room for one `SCM_RIGHTS` header with
/// [`SCM_MAX_FD`] ints (`CMSG_SPACE(253 * 4)` = 1032 bytes), u64 aligned.
const SEND_CMSG_WORDS: usize = 130;

/// Control buffer for receiving (u64 aligned): 512 bytes, room for 124
/// fds, so that a sender's excess arrives and is closed here rather than
/// being silently dropped by the kernel (`MSG_CTRUNC` reports the rest).
const RECV_CMSG_WORDS: usize = 64;

/// One `sendmsg` of the bytes in `iov` with `fds` attached as one
/// `SCM_RIGHTS` control message (none when `fds` is empty). Returns the
/// bytes sent, which may be fewer than offered; the fds travel with the
/// first byte, so a continuation must not send them again.
///
/// `MSG_NOSIGNAL`: a closed peer is `EPIPE`, never `SIGPIPE`. The fds are
/// raw numbers: the kernel checks each (`EBADF`) and the caller keeps
/// ownership of them. More than [`SCM_MAX_FD`] fds is `InvalidInput`.
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    iov: &[IoSlice<'_>],
    fds: &[RawFd],
) -> io::Result<usize> {
    if fds.len() > SCM_MAX_FD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} fds in one message, at most {SCM_MAX_FD}", fds.len()),
        ));
    }
    let mut cmsg = [0u64; SEND_CMSG_WORDS];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is guaranteed ABI-compatible with `iovec` on Unix; the
    // kernel only reads through msg_iov.
    mh.msg_iov = iov.as_ptr() as *mut libc::iovec;
    mh.msg_iovlen = iov.len() as _;
    if !fds.is_empty() {
        let bytes = std::mem::size_of_val(fds);
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
        debug_assert!(space <= std::mem::size_of_val(&cmsg));
        mh.msg_control = cmsg.as_mut_ptr().cast();
        mh.msg_controllen = space as _;
        // SAFETY: the control buffer (aligned, zeroed) holds one header
        // plus `fds.len()` ints (≤ SCM_MAX_FD, which SEND_CMSG_WORDS
        // covers), so CMSG_FIRSTHDR is non-null and every write below
        // stays inside `cmsg`.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&mh);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), bytes);
        }
    }
    // SAFETY: `mh` points at the iovecs of `iov` (each valid for its
    // length) and at `cmsg`, all alive for the call; the kernel only
    // reads them.
    let n = cvt(unsafe { libc::sendmsg(sock.as_raw_fd(), &mh, libc::MSG_NOSIGNAL) })?;
    Ok(n as usize)
}

/// What one [`recv_with_fds`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes read into the buffer (0: end of stream).
    pub bytes: usize,
    /// True when fds were lost: more than fit the control buffer
    /// (`MSG_CTRUNC`), or more than the caller's `max_fds` (closed here).
    pub truncated: bool,
}

/// One `recvmsg` into `buf`; every fd that came with it is appended to
/// `fds` (as an owned, close-on-exec fd) while `fds` holds fewer than
/// `max_fds`, and closed otherwise.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    max_fds: usize,
) -> io::Result<Received> {
    let mut cmsg = [0u64; RECV_CMSG_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cmsg.as_mut_ptr().cast();
    mh.msg_controllen = std::mem::size_of_val(&cmsg) as _;
    // SAFETY: `mh` points at `iov` (valid and writable for `buf.len()`
    // bytes) and at `cmsg` (for msg_controllen bytes), both alive for the
    // call; MSG_CMSG_CLOEXEC keeps received fds from leaking into
    // children.
    let n = cvt(unsafe { libc::recvmsg(sock.as_raw_fd(), &mut mh, libc::MSG_CMSG_CLOEXEC) })?;
    let mut truncated = mh.msg_flags & libc::MSG_CTRUNC != 0;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel just
    // filled, bounded by the msg_controllen it set; each SCM_RIGHTS
    // payload is an array of ints (read unaligned) that the kernel
    // installed as new fds for us, each taken into an OwnedFd once.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&mh);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<libc::c_int>() {
                    let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    if fds.len() < max_fds {
                        fds.push(fd);
                    } else {
                        truncated = true;
                        drop(fd);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&mh, c);
        }
    }
    Ok(Received {
        bytes: n as usize,
        truncated,
    })
}

/// One `recv` into `buf` with `flags` (`MSG_PEEK`, `MSG_DONTWAIT`, ...);
/// returns the count, 0 at the end of the stream.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`,
    // which is valid and writable for the call.
    let n =
        cvt(unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) })?;
    Ok(n as usize)
}

/// Asks for a send buffer of `bytes` (`SO_SNDBUF`; the kernel doubles it
/// and caps it at `wmem_max`).
pub fn set_send_buffer(sock: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    let v: libc::c_int = bytes.min(libc::c_int::MAX as usize) as libc::c_int;
    // SAFETY: setsockopt reads one c_int from `&v`, which lives for the
    // call, and is told its exact size.
    cvt(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// The process id of the peer of a connected `AF_UNIX` socket
/// (`SO_PEERCRED`, as it was when the peer connected).
pub fn peer_pid(sock: BorrowedFd<'_>) -> io::Result<i32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a live
    // ucred of exactly that size, and updates `len`.
    cvt(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(cred.pid)
}

/// A new `AF_UNIX` stream socket (close-on-exec), neither bound nor
/// connected.
pub fn unix_stream_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes integers only.
    let raw =
        cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a non-negative result is a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Binds `sock` to the filesystem path `path` (created with the umask's
/// mode; nothing listens yet). A path too long for `sun_path` is
/// `InvalidInput`.
pub fn bind_unix(sock: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is valid (and leaves the
    // path NUL-terminated).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path is {} bytes, at most {}",
                bytes.len(),
                addr.sun_path.len() - 1
            ),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes that
    // lives for the call; the kernel only reads it.
    cvt(unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    })?;
    Ok(())
}

/// Starts listening on a bound socket with room for `backlog` pending
/// connections.
pub fn listen(sock: BorrowedFd<'_>, backlog: libc::c_int) -> io::Result<()> {
    // SAFETY: listen takes an fd and an integer.
    cvt(unsafe { libc::listen(sock.as_raw_fd(), backlog) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn bytes_and_fds_travel_together() {
        let (a, b) = UnixStream::pair().unwrap();
        let (p, q) = UnixStream::pair().unwrap();
        let fds = [p.as_raw_fd(), q.as_raw_fd(), p.as_raw_fd()];
        let n = send_with_fds(
            a.as_fd(),
            &[IoSlice::new(b"he"), IoSlice::new(b"llo")],
            &fds,
        )
        .unwrap();
        assert_eq!(n, 5);
        let mut buf = [0u8; 8];
        let mut got = Vec::new();
        let r = recv_with_fds(b.as_fd(), &mut buf, &mut got, 2).unwrap();
        assert_eq!(
            r,
            Received {
                bytes: 5,
                truncated: true
            }
        );
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(got.len(), 2, "the third fd is closed, not kept");
        // The received fds are the same sockets.
        let mut mine = UnixStream::from(got.remove(0));
        mine.write_all(b"z").unwrap();
        let mut one = [0u8; 1];
        (&q).read_exact(&mut one).unwrap();
        assert_eq!(&one, b"z");
        // No fds; a peek leaves the byte; end of stream.
        send_with_fds(a.as_fd(), &[IoSlice::new(b"x")], &[]).unwrap();
        assert_eq!(recv(b.as_fd(), &mut buf, libc::MSG_PEEK).unwrap(), 1);
        drop(a);
        let r = recv_with_fds(b.as_fd(), &mut buf, &mut got, 16).unwrap();
        assert_eq!((r.bytes, r.truncated), (1, false));
        assert_eq!(
            recv_with_fds(b.as_fd(), &mut buf, &mut got, 16)
                .unwrap()
                .bytes,
            0
        );
        let too_many = vec![p.as_raw_fd(); SCM_MAX_FD + 1];
        assert_eq!(
            send_with_fds(b.as_fd(), &[], &too_many).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn many_fds_fit_and_closed_peer_is_epipe() {
        let (a, b) = UnixStream::pair().unwrap();
        let (p, _q) = UnixStream::pair().unwrap();
        set_send_buffer(a.as_fd(), 1 << 20).unwrap();
        let fds = vec![p.as_raw_fd(); 100];
        send_with_fds(a.as_fd(), &[IoSlice::new(b"m")], &fds).unwrap();
        let mut got = Vec::new();
        let r = recv_with_fds(b.as_fd(), &mut [0u8; 1], &mut got, usize::MAX).unwrap();
        assert_eq!((r.bytes, r.truncated, got.len()), (1, false, 100));
        drop(b);
        let e = send_with_fds(a.as_fd(), &[IoSlice::new(b"m")], &[]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn socket_bind_listen() {
        let dir = std::env::temp_dir().join(format!("vfio-migrate-sys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let s = unix_stream_socket().unwrap();
        bind_unix(s.as_fd(), &path).unwrap();
        listen(s.as_fd(), 4).unwrap();
        let l = std::os::unix::net::UnixListener::from(s);
        let _c = UnixStream::connect(&path).unwrap();
        l.accept().unwrap();
        let long = dir.join("x".repeat(200));
        let s = unix_stream_socket().unwrap();
        assert_eq!(
            bind_unix(s.as_fd(), &long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
