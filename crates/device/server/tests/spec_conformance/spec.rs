//! The protocol as the spec writes it, by hand: its numbers, little-endian
//! encoding, a raw connection that sends and receives whole messages with
//! fds (`sendmsg`/`recvmsg`), a small JSON reader for VERSION, and guest
//! memory. std, libc and the `vfio_migrate_sys` syscall wrappers only.

use std::io::{IoSlice, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

// ---- numbers from the spec ------------------------------------------------

pub const VERSION: u16 = 1;
pub const DMA_MAP: u16 = 2;
pub const DMA_UNMAP: u16 = 3;
pub const DEVICE_GET_INFO: u16 = 4;
pub const DEVICE_GET_REGION_INFO: u16 = 5;
pub const DEVICE_GET_REGION_IO_FDS: u16 = 6;
pub const DEVICE_GET_IRQ_INFO: u16 = 7;
pub const DEVICE_SET_IRQS: u16 = 8;
pub const REGION_READ: u16 = 9;
pub const REGION_WRITE: u16 = 10;
pub const DEVICE_RESET: u16 = 13;
pub const DEVICE_FEATURE: u16 = 16;
pub const MIG_DATA_READ: u16 = 17;
pub const MIG_DATA_WRITE: u16 = 18;

pub const F_TYPE_MASK: u32 = 0xf;
pub const F_REPLY: u32 = 1;
pub const F_NO_REPLY: u32 = 1 << 4;
pub const F_ERROR: u32 = 1 << 5;

pub const FEAT_GET: u32 = 1 << 16;
pub const FEAT_SET: u32 = 1 << 17;
pub const FEAT_PROBE: u32 = 1 << 18;
pub const FEAT_MIGRATION: u32 = 1;
pub const FEAT_MIG_STATE: u32 = 2;
pub const FEAT_LOG_START: u32 = 6;
pub const FEAT_LOG_STOP: u32 = 7;
pub const FEAT_LOG_REPORT: u32 = 8;

pub const ST_STOP: u32 = 1;
pub const ST_RUNNING: u32 = 2;
pub const ST_STOP_COPY: u32 = 3;
pub const ST_RESUMING: u32 = 4;
pub const ST_PRE_COPY: u32 = 6;

// The vgpu sample's BAR0 registers (from the device contract).
pub const R_ID: u64 = 0x00;
pub const R_CONTROL: u64 = 0x08;
pub const R_RENDER_RATE: u64 = 0x10;
pub const R_DMA_RATE: u64 = 0x18;
pub const R_DMA_IOVA: u64 = 0x20;
pub const R_DMA_SIZE: u64 = 0x28;
pub const R_SEED: u64 = 0x30;
pub const R_DIGEST: u64 = 0x38;
pub const R_FRAME: u64 = 0x40;
pub const R_DMA_COUNT: u64 = 0x48;
pub const R_SCRATCH: u64 = 0x60;

// ---- little-endian helpers ------------------------------------------------

pub fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
pub fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
pub fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Concatenates little-endian fields.
macro_rules! le {
    ($($v:expr),* $(,)?) => {{
        let mut v: Vec<u8> = Vec::new();
        $(v.extend_from_slice(&$v.to_le_bytes());)*
        v
    }};
}

pub const SPEC_CAPS: &str = r#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"max_dma_maps":65535,"pgsizes":4096,"write_multiple":false,"twin_socket":{"supported":false}}}"#;

pub fn version_payload(major: u16, minor: u16, json: &str) -> Vec<u8> {
    let mut p = le!(major, minor);
    p.extend_from_slice(json.as_bytes());
    p.push(0);
    p
}

// ---- raw connection -------------------------------------------------------

pub struct Conn {
    pub s: UnixStream,
    pub next_id: u16,
}

/// One decoded reply.
pub struct Reply {
    pub id: u16,
    pub cmd: u16,
    pub flags: u32,
    pub errno: u32,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Reply {
    /// Asserts success; returns the payload.
    pub fn ok(&self) -> &[u8] {
        assert_eq!(
            self.flags & F_ERROR,
            0,
            "cmd {} failed with errno {}",
            self.cmd,
            self.errno
        );
        assert_eq!(self.errno, 0, "error field must be 0 in a success reply");
        &self.payload
    }

    /// Asserts an error reply; returns the errno.
    pub fn err(&self) -> u32 {
        assert_ne!(
            self.flags & F_ERROR,
            0,
            "cmd {} should have failed, payload {:?}",
            self.cmd,
            self.payload
        );
        // "If an error occurs, the reply message must only include the
        // reply header."
        assert!(
            self.payload.is_empty(),
            "error reply carries {} payload bytes",
            self.payload.len()
        );
        assert!(self.fds.is_empty(), "error reply carries fds");
        assert_ne!(self.errno, 0, "our server always names the errno");
        self.errno
    }
}

pub fn send_with_fds(s: &UnixStream, bytes: &[u8], fds: &[RawFd]) {
    if fds.is_empty() {
        (&*s).write_all(bytes).unwrap();
        return;
    }
    let sent = vfio_migrate_sys::sock::send_with_fds(s.as_fd(), &[IoSlice::new(bytes)], fds)
        .unwrap_or_else(|e| panic!("sendmsg: {e}"));
    assert!(sent > 0, "sendmsg sent nothing");
    if sent < bytes.len() {
        (&*s).write_all(&bytes[sent..]).unwrap();
    }
}

/// Reads exactly `buf.len()` bytes, collecting any fds on the way.
/// Returns false on EOF before the first byte.
pub fn recv_with_fds(s: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> bool {
    let mut got = 0;
    while got < buf.len() {
        let n = vfio_migrate_sys::sock::recv_with_fds(s.as_fd(), &mut buf[got..], fds, usize::MAX)
            .unwrap_or_else(|e| panic!("recvmsg: {e}"))
            .bytes;
        if n == 0 {
            assert_eq!(got, 0, "EOF in the middle of a reply");
            return false;
        }
        got += n;
    }
    true
}

impl Conn {
    pub fn id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(7);
        self.next_id
    }

    pub fn send_raw(&mut self, id: u16, cmd: u16, flags: u32, payload: &[u8], fds: &[RawFd]) {
        let mut m = le!(id, cmd, (16 + payload.len()) as u32, flags, 0u32);
        m.extend_from_slice(payload);
        send_with_fds(&self.s, &m, fds);
    }

    /// Reads one whole message; `None` on EOF.
    pub fn recv(&mut self) -> Option<Reply> {
        let mut h = [0u8; 16];
        let mut fds = Vec::new();
        if !recv_with_fds(&self.s, &mut h, &mut fds) {
            return None;
        }
        let size = u32_at(&h, 4) as usize;
        assert!(size >= 16, "reply msg_size {size} < header");
        let mut payload = vec![0u8; size - 16];
        if !payload.is_empty() {
            assert!(recv_with_fds(&self.s, &mut payload, &mut fds), "EOF");
        }
        Some(Reply {
            id: u16_at(&h, 0),
            cmd: u16_at(&h, 2),
            flags: u32_at(&h, 8),
            errno: u32_at(&h, 12),
            payload,
            fds,
        })
    }

    /// Nothing may follow a reply: `msg_size` covered every byte sent.
    pub fn assert_drained(&self) {
        let mut b = [0u8; 1];
        // Peeking one byte, non-blocking.
        let r = vfio_migrate_sys::sock::recv(
            self.s.as_fd(),
            &mut b,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        );
        assert!(
            r.is_err(),
            "bytes follow the reply beyond its msg_size (or the server closed)"
        );
    }

    /// Sends a command and checks the reply header against it.
    pub fn call(&mut self, cmd: u16, payload: &[u8], fds: &[RawFd]) -> Reply {
        let id = self.id();
        self.send_raw(id, cmd, 0, payload, fds);
        let r = self.recv().expect("server closed the connection");
        assert_eq!(r.id, id, "msg_id must be echoed");
        assert_eq!(r.cmd, cmd, "command must be echoed");
        assert_eq!(r.flags & F_TYPE_MASK, F_REPLY, "type must be reply");
        assert_eq!(r.flags & !(F_TYPE_MASK | F_ERROR), 0, "stray flag bits");
        self.assert_drained();
        r
    }

    pub fn read(&mut self, region: u32, offset: u64, count: u32) -> Vec<u8> {
        let r = self.call(REGION_READ, &le!(offset, region, count), &[]);
        let p = r.ok();
        assert_eq!(p.len(), 16 + count as usize, "REGION_READ reply size");
        assert_eq!(u64_at(p, 0), offset, "REGION_READ echoes offset");
        assert_eq!(u32_at(p, 8), region, "REGION_READ echoes region");
        assert_eq!(u32_at(p, 12), count, "REGION_READ echoes count");
        p[16..].to_vec()
    }

    pub fn reg(&mut self, off: u64) -> u64 {
        u64_at(&self.read(0, off, 8), 0)
    }

    pub fn write(&mut self, region: u32, offset: u64, data: &[u8]) {
        let mut req = le!(offset, region, data.len() as u32);
        req.extend_from_slice(data);
        let r = self.call(REGION_WRITE, &req, &[]);
        // The WRITE reply is offset, region, count: no data.
        assert_eq!(r.ok(), &req[..16], "REGION_WRITE reply");
    }

    pub fn set_reg(&mut self, off: u64, v: u64) {
        self.write(0, off, &v.to_le_bytes());
    }

    /// A harmless command must still get its own answer.
    pub fn in_sync(&mut self) {
        assert_eq!(self.reg(R_ID), 0x5647_5055_0000_0001);
    }

    pub fn feature(&mut self, flags: u32, argsz: u32, data: &[u8]) -> Reply {
        let mut p = le!(argsz, flags);
        p.extend_from_slice(data);
        self.call(DEVICE_FEATURE, &p, &[])
    }

    /// SET MIG_DEVICE_STATE; the reply must be the request, byte for byte.
    pub fn set_state(&mut self, state: u32) {
        let req = le!(16u32, FEAT_SET | FEAT_MIG_STATE, state, -1i32);
        let r = self.call(DEVICE_FEATURE, &req, &[]);
        assert_eq!(r.ok(), &req[..], "SET reply must equal the request");
    }

    pub fn get_state(&mut self) -> u32 {
        let r = self.feature(FEAT_GET | FEAT_MIG_STATE, 16, &[]);
        let p = r.ok();
        assert_eq!(p.len(), 16);
        assert_eq!(u32_at(p, 0), 16, "GET argsz = full reply size");
        assert_eq!(u32_at(p, 4), FEAT_GET | FEAT_MIG_STATE, "flags echoed");
        u32_at(p, 8)
    }
}

// ---- a small JSON reader (for the VERSION reply) --------------------------

#[derive(Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub fn get(&self, k: &str) -> Option<&Json> {
        match self {
            Json::Obj(m) => m.iter().find(|(n, _)| n == k).map(|(_, v)| v),
            _ => None,
        }
    }
    pub fn keys(&self) -> Vec<&str> {
        match self {
            Json::Obj(m) => m.iter().map(|(n, _)| n.as_str()).collect(),
            _ => Vec::new(),
        }
    }
}

pub fn parse_json(s: &str) -> Json {
    let b = s.as_bytes();
    let mut i = 0;
    let v = json_value(b, &mut i);
    json_ws(b, &mut i);
    assert_eq!(i, b.len(), "trailing bytes after the JSON document: {s}");
    v
}

pub fn json_ws(b: &[u8], i: &mut usize) {
    while *i < b.len() && b[*i].is_ascii_whitespace() {
        *i += 1;
    }
}

pub fn json_str(b: &[u8], i: &mut usize) -> String {
    assert_eq!(b[*i], b'"');
    *i += 1;
    let start = *i;
    while b[*i] != b'"' {
        assert_ne!(b[*i], b'\\', "escapes are not expected in the caps JSON");
        *i += 1;
    }
    *i += 1;
    String::from_utf8(b[start..*i - 1].to_vec()).unwrap()
}

pub fn json_value(b: &[u8], i: &mut usize) -> Json {
    json_ws(b, i);
    match b[*i] {
        b'{' => {
            *i += 1;
            let mut m = Vec::new();
            json_ws(b, i);
            if b[*i] == b'}' {
                *i += 1;
                return Json::Obj(m);
            }
            loop {
                json_ws(b, i);
                let k = json_str(b, i);
                json_ws(b, i);
                assert_eq!(b[*i], b':');
                *i += 1;
                m.push((k, json_value(b, i)));
                json_ws(b, i);
                *i += 1;
                match b[*i - 1] {
                    b',' => continue,
                    b'}' => return Json::Obj(m),
                    c => panic!("bad JSON object separator {:?}", c as char),
                }
            }
        }
        b'[' => {
            *i += 1;
            let mut a = Vec::new();
            json_ws(b, i);
            if b[*i] == b']' {
                *i += 1;
                return Json::Arr(a);
            }
            loop {
                a.push(json_value(b, i));
                json_ws(b, i);
                *i += 1;
                match b[*i - 1] {
                    b',' => continue,
                    b']' => return Json::Arr(a),
                    c => panic!("bad JSON array separator {:?}", c as char),
                }
            }
        }
        b'"' => Json::Str(json_str(b, i)),
        b't' | b'f' | b'n' => {
            for (w, v) in [
                ("true", Json::Bool(true)),
                ("false", Json::Bool(false)),
                ("null", Json::Null),
            ] {
                if b[*i..].starts_with(w.as_bytes()) {
                    *i += w.len();
                    return v;
                }
            }
            panic!("bad JSON literal")
        }
        _ => {
            let start = *i;
            while *i < b.len() && matches!(b[*i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                *i += 1;
            }
            Json::Num(
                std::str::from_utf8(&b[start..*i])
                    .unwrap()
                    .parse()
                    .expect("JSON number"),
            )
        }
    }
}

/// Decodes a VERSION reply payload: (major, minor, JSON).
pub fn decode_version(p: &[u8]) -> (u16, u16, Json) {
    assert!(p.len() > 4, "VERSION reply without version data");
    let data = &p[4..];
    assert_eq!(data.last(), Some(&0), "version data must end with its NUL");
    let text = std::str::from_utf8(&data[..data.len() - 1]).expect("UTF-8 JSON");
    assert!(!text.contains('\0'), "one NUL, at the end");
    (u16_at(p, 0), u16_at(p, 2), parse_json(text))
}

// ---- guest memory ----------------------------------------------------------

pub fn memfd(size: usize) -> OwnedFd {
    vfio_migrate_sys::memfd::create_sized(c"conf-ram", size as u64).unwrap()
}

/// A shared read-write mapping of `len` bytes of `fd`.
pub struct Map(vfio_migrate_sys::MmapRegion);

impl Map {
    pub fn new(fd: BorrowedFd<'_>, len: usize) -> Self {
        Self(vfio_migrate_sys::MmapRegion::shared(fd, 0, len, true).unwrap())
    }
    pub fn bytes(&self) -> Vec<u8> {
        // A copy is taken (the device may write concurrently; only byte
        // values matter).
        let mut v = vec![0u8; self.0.len()];
        self.0.read(0, &mut v).unwrap();
        v
    }
    pub fn zero(&self) {
        self.0.fill(0, self.0.len(), 0).unwrap();
    }
}

pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
