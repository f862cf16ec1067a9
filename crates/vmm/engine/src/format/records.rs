//! The stream's building blocks: the header, the record header, every
//! record kind with its payload bounds, and the fixed-layout payloads.
//! Adding a record kind starts here (its number, name, bounds and whether
//! it names a device), then [`crate::format::grammar`] says where it may
//! appear.

use vfio_migrate_abi::wire_struct;

/// The first 8 bytes of every stream.
pub const MAGIC: [u8; 8] = *b"VFIOMIGR";
/// The major format version this build writes and reads. A stream of
/// another major version is refused.
pub const FORMAT_MAJOR: u16 = 1;
/// The minor format version this build writes. A reader accepts any minor
/// version of its major: newer minors only add records marked
/// [`FLAG_OPTIONAL`], which an older reader skips.
pub const FORMAT_MINOR: u16 = 4;
/// Stream header size.
pub const STREAM_HEADER_SIZE: usize = StreamHeader::SIZE;
/// Record header size.
pub const RECORD_HEADER_SIZE: usize = RecordHeader::SIZE;
/// `device` value of records that belong to no device.
pub const NO_DEVICE: u32 = u32::MAX;
/// Most devices one stream may carry.
pub const MAX_DEVICES: usize = 64;
/// Largest device-data payload (pre-copy or stop-copy) in one record.
pub const MAX_DEVICE_DATA: usize = 8 << 20;
/// Largest run of guest pages in one record, in bytes of page data.
pub const MAX_RAM_RUN_BYTES: usize = 8 << 20;
/// Largest guest page size accepted.
pub const MAX_PAGE_SIZE: u64 = 1 << 21;
/// Largest descriptor / control JSON payload.
pub const MAX_JSON: usize = 64 << 10;
/// Largest reason text in a refusal or failure.
pub const MAX_REASON: usize = 4096;
/// Largest payload of an optional record this build does not know (it is
/// read, checked and skipped).
pub const MAX_OPTIONAL: usize = 1 << 20;
/// Record flag: readers that do not know this record's kind skip it. Set
/// by writers of a newer minor version on the records that minor adds.
pub const FLAG_OPTIONAL: u16 = 1 << 0;

wire_struct! {
    /// Stream header: magic, format version (major, minor), flags (0).
    pub struct StreamHeader {
        /// [`MAGIC`] read as a little-endian u64 ([`magic_u64`]).
        pub magic: u64,
        /// Format major version; readers refuse any but [`FORMAT_MAJOR`].
        pub major: u16,
        /// Format minor version; any is accepted within the major.
        pub minor: u16,
        /// 0; any other value is refused.
        pub flags: u32,
    }
}

wire_struct! {
    /// Record header. `crc` is CRC32C over the first 12 bytes of this header
    /// followed by the payload.
    pub struct RecordHeader {
        /// The record type, a [`Kind`] number.
        pub kind: u16,
        /// [`FLAG_OPTIONAL`] or 0; other bits are refused.
        pub flags: u16,
        /// Device index (below [`MAX_DEVICES`]) for per-device kinds,
        /// [`NO_DEVICE`] for the others.
        pub device: u32,
        /// Payload bytes after this header, within the kind's bounds.
        pub length: u32,
        /// CRC32C of header bytes 0..12 followed by the payload.
        pub crc: u32,
    }
}

wire_struct! {
    /// Payload of [`Kind::Ram`]: the guest RAM layout.
    pub struct RamInfo {
        /// Guest RAM size in bytes, a multiple of `page_size`.
        pub size: u64,
        /// Guest page size in bytes: a power of two up to [`MAX_PAGE_SIZE`].
        pub page_size: u64,
    }
}

wire_struct! {
    /// Payload of [`Kind::RunState`]: the state the source device was in
    /// when the migration started (a `MigState` value: RUNNING or STOP).
    pub struct RunState {
        /// `MigState::Running` (2) or `MigState::Stop` (1).
        pub state: u32,
        /// 0.
        pub reserved: u32,
    }
}

wire_struct! {
    /// Payload of [`Kind::SetupEnd`].
    pub struct SetupEnd {
        /// Number of [`Kind::Device`] records before it; must match.
        pub devices: u32,
        /// 0.
        pub flags: u32,
    }
}

wire_struct! {
    /// Head of a [`Kind::RamPages`] payload; `count` pages of data follow.
    pub struct RamRun {
        /// Index of the first page (guest address / page size).
        pub first_page: u64,
        /// Number of consecutive pages, at least 1; the run must lie inside
        /// guest RAM.
        pub count: u32,
        /// 0.
        pub reserved: u32,
    }
}

wire_struct! {
    /// Payload of [`Kind::DeviceEnd`]: bytes of device data sent in total.
    pub struct DeviceEnd {
        /// Total device-data bytes (pre-copy plus stop-copy) sent for this
        /// device; the destination checks it against what it received.
        pub bytes: u64,
    }
}

wire_struct! {
    /// Payload of [`Kind::Round`]: the round just completed.
    pub struct Round {
        /// Number of the pre-copy round that ended; a live destination acks
        /// it with a round-ack of the same number.
        pub iteration: u64,
    }
}

wire_struct! {
    /// Payload of [`Kind::Verify`]: the device digest at the source, read
    /// while the device was stopped.
    pub struct Digest {
        /// The device's state digest, as the caller's
        /// [`crate::verify::Verifier`] computed it.
        pub digest: u64,
    }
}

wire_struct! {
    /// Payload of [`Kind::Verified`]: what the source compared before it
    /// told the destination to run.
    pub struct Verdict {
        /// Device digests compared, every one equal.
        pub compared: u32,
        /// Devices in the migration.
        pub devices: u32,
    }
}

wire_struct! {
    /// Payload of [`Kind::End`]: how many records came before it and their
    /// total size (headers included), so a truncated stream is detected
    /// even when it ends on a record boundary.
    pub struct End {
        /// Records written before this one.
        pub records: u64,
        /// Bytes written before this record, stream header included.
        pub bytes: u64,
    }
}

wire_struct! {
    /// Payload of [`Kind::Channels`] (setup, optional, minor 4): the source
    /// asks for `count` parallel data channels; each will present `token`.
    pub struct ChannelsRequest {
        /// Data channels asked for (2 to [`MAX_CHANNELS`]).
        pub count: u32,
        /// 0.
        pub flags: u32,
        /// Low half of the session token (random, per migration).
        pub token_lo: u64,
        /// High half of the session token.
        pub token_hi: u64,
    }
}

wire_struct! {
    /// Payload of [`Kind::ChannelHello`], the first record of a data
    /// channel: which migration (token) and which channel it is.
    pub struct ChannelHello {
        /// Low half of the token of [`ChannelsRequest`].
        pub token_lo: u64,
        /// High half of the token.
        pub token_hi: u64,
        /// This channel's index (0-based, below `count`).
        pub index: u32,
        /// Channels in the set.
        pub count: u32,
    }
}

wire_struct! {
    /// Head of a [`Kind::DeviceChunk`] payload; the data follows. The
    /// chunk is `data.len()` bytes of the device's save stream starting
    /// at `offset` (bytes of that stream before it): the destination
    /// writes chunks to the device in offset order, whatever order they
    /// arrive in.
    pub struct ChunkHead {
        /// Offset of the first data byte in the device's save stream.
        pub offset: u64,
        /// [`CHUNK_STOP_COPY`] when read in STOP_COPY.
        pub flags: u32,
        /// 0.
        pub reserved: u32,
    }
}

wire_struct! {
    /// Payload of [`Kind::ChannelEpoch`] (main stream) and
    /// [`Kind::ChannelSync`] (each data channel): an epoch is one pre-copy
    /// round, or the stop-copy; its data on the channels ends with a sync
    /// of the same number.
    pub struct Epoch {
        /// Epoch number, from 0, consecutive.
        pub epoch: u64,
        /// 1 for the last epoch (the channels end after its sync), else 0.
        pub last: u32,
        /// 0.
        pub reserved: u32,
    }
}

wire_struct! {
    /// Payload of [`Kind::ChannelsReady`]: the destination accepts `count`
    /// data channels now.
    pub struct ChannelsReady {
        /// Channels the destination waits for (the count asked for).
        pub count: u32,
        /// 0.
        pub reserved: u32,
    }
}

/// [`ChunkHead::flags`]: the data was read in STOP_COPY.
pub const CHUNK_STOP_COPY: u32 = 1;
/// Most parallel data channels of one migration.
pub const MAX_CHANNELS: u32 = 64;

wire_struct! {
    /// Payload of [`Kind::Caps`] and [`Kind::CapsReply`]: what one end
    /// offers ([`CAP_SWITCHOVER_ACK`]); unknown bits are ignored.
    pub struct Caps {
        /// `CAP_*` bits.
        pub flags: u64,
    }
}

/// [`Caps`] bit: the source waits for [`Kind::SwitchoverAck`]s before it
/// stops (in [`Kind::Caps`]); the destination sends them (in
/// [`Kind::CapsReply`]).
pub const CAP_SWITCHOVER_ACK: u64 = 1;

wire_struct! {
    /// Payload of [`Kind::InitialSent`] and [`Kind::SwitchoverAck`].
    pub struct InitialGen {
        /// Which initial data: 0 at first, one more each time the device
        /// re-initialised its pre-copy data (REINIT).
        pub generation: u64,
    }
}

/// `StreamHeader::magic` as a little-endian integer.
pub fn magic_u64() -> u64 {
    u64::from_le_bytes(MAGIC)
}

/// Record types. Forward records go source → destination; replies go
/// back on live migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum Kind {
    /// A device's compatibility descriptor (JSON).
    Device = 0x01,
    /// Guest RAM layout ([`RamInfo`]).
    Ram = 0x02,
    /// Setup, after the device's descriptor (minor 1, optional): the
    /// source device's run state ([`RunState`]); the destination ends in
    /// it — a stopped source gives a stopped destination.
    RunState = 0x04,
    /// End of the setup section ([`SetupEnd`]); a live source waits for
    /// [`Kind::Accept`] or [`Kind::Refuse`] here.
    SetupEnd = 0x03,
    /// Device pre-copy data.
    DevicePrecopy = 0x10,
    /// Device stop-copy data.
    DeviceStopCopy = 0x11,
    /// A device's save stream is complete ([`DeviceEnd`]).
    DeviceEnd = 0x12,
    /// End of a pre-copy round ([`Round`]): the destination checks that
    /// its devices are still there.
    Round = 0x13,
    /// Either direction, any time, empty (minor 1, optional): "still
    /// here". Sent on a quiet live link so the peer's stall deadline only
    /// catches a peer that is really gone.
    Heartbeat = 0x14,
    /// Setup (minor 3, optional): what the source offers ([`Caps`]); a
    /// destination that knows it answers [`Kind::CapsReply`] before
    /// [`Kind::Accept`].
    Caps = 0x15,
    /// Pre-copy (minor 3, optional): every byte of the device's initial
    /// pre-copy data of this generation ([`InitialGen`]) came before this
    /// record. A destination that offered switchover acks answers
    /// [`Kind::SwitchoverAck`] once it has loaded them.
    InitialSent = 0x16,
    /// A run of guest RAM pages ([`RamRun`] + data).
    RamPages = 0x20,
    /// A run of guest RAM pages that are all zero ([`RamRun`], no data).
    RamZero = 0x21,
    /// Setup (minor 4, optional): parallel data channels asked for
    /// ([`ChannelsRequest`]). A destination that does not know it answers
    /// [`Kind::Accept`] alone and everything goes on the main stream.
    Channels = 0x22,
    /// First record of a data channel ([`ChannelHello`]).
    ChannelHello = 0x23,
    /// A chunk of device data at an offset of its save stream
    /// ([`ChunkHead`] + data): on data channels, and in a snapshot written
    /// with several channels.
    DeviceChunk = 0x24,
    /// Data channel: the end of an epoch's data on this channel ([`Epoch`]).
    ChannelSync = 0x25,
    /// Main stream: the data of an epoch comes on the channels now; the
    /// destination reads each channel to its sync of that epoch before
    /// the next main record ([`Epoch`]).
    ChannelEpoch = 0x26,
    /// A device digest for verification ([`Digest`]).
    Verify = 0x30,
    /// The source gives up; payload is the reason.
    Abort = 0x7e,
    /// End of the stream ([`End`]).
    End = 0x7f,
    /// Live, after the end marker and just before [`Kind::Go`] (minor 2,
    /// optional): the source compared the destination's digests with its
    /// own and they were equal ([`Verdict`]), so the destination can say
    /// it runs verified state.
    Verified = 0x50,
    /// Source → destination after [`Kind::Ready`]: start running.
    Go = 0x80,
    /// Reply: the devices are compatible and RESUMING.
    Accept = 0x81,
    /// Reply: refused at setup; payload is the reason.
    Refuse = 0x82,
    /// Reply: loaded, validated and verified; payload is JSON
    /// ([`crate::format::ReadyInfo`]).
    Ready = 0x83,
    /// Reply: the destination failed; payload is the reason.
    Failed = 0x84,
    /// Reply: the destination devices are RUNNING.
    Running = 0x85,
    /// Reply: everything up to this pre-copy round ([`Round`]) is loaded.
    RoundAck = 0x86,
    /// Reply to [`Kind::Channels`]: connect the data channels now
    /// ([`ChannelsReady`]).
    ChannelsReady = 0x90,
    /// Reply (minor 3, optional), before [`Kind::Accept`], only to a
    /// source that sent [`Kind::Caps`]: what the destination does
    /// ([`Caps`]).
    CapsReply = 0x87,
    /// Reply (minor 3, optional): the device's initial pre-copy data of
    /// this generation ([`InitialGen`]) is loaded; the source may stop it
    /// (QEMU's switchover-ack).
    SwitchoverAck = 0x88,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 32] = [
        Kind::Device,
        Kind::Ram,
        Kind::RunState,
        Kind::SetupEnd,
        Kind::DevicePrecopy,
        Kind::DeviceStopCopy,
        Kind::DeviceEnd,
        Kind::Round,
        Kind::Heartbeat,
        Kind::Caps,
        Kind::InitialSent,
        Kind::RamPages,
        Kind::RamZero,
        Kind::Channels,
        Kind::ChannelHello,
        Kind::DeviceChunk,
        Kind::ChannelSync,
        Kind::ChannelEpoch,
        Kind::Verify,
        Kind::Verified,
        Kind::Abort,
        Kind::End,
        Kind::Go,
        Kind::Accept,
        Kind::Refuse,
        Kind::Ready,
        Kind::Failed,
        Kind::Running,
        Kind::RoundAck,
        Kind::ChannelsReady,
        Kind::CapsReply,
        Kind::SwitchoverAck,
    ];

    /// The kind for a wire value.
    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| *k as u16 == v)
    }

    /// Short name, for messages and `inspect`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Device => "device",
            Kind::Ram => "ram",
            Kind::RunState => "run-state",
            Kind::SetupEnd => "setup-end",
            Kind::DevicePrecopy => "device-precopy",
            Kind::DeviceStopCopy => "device-stopcopy",
            Kind::DeviceEnd => "device-end",
            Kind::Round => "round",
            Kind::Heartbeat => "heartbeat",
            Kind::RamPages => "ram-pages",
            Kind::RamZero => "ram-zero",
            Kind::Verify => "verify",
            Kind::Verified => "verified",
            Kind::Abort => "abort",
            Kind::End => "end",
            Kind::Go => "go",
            Kind::Accept => "accept",
            Kind::Refuse => "refuse",
            Kind::Ready => "ready",
            Kind::Failed => "failed",
            Kind::Running => "running",
            Kind::RoundAck => "round-ack",
            Kind::Channels => "channels",
            Kind::ChannelHello => "channel-hello",
            Kind::DeviceChunk => "device-chunk",
            Kind::ChannelSync => "channel-sync",
            Kind::ChannelEpoch => "channel-epoch",
            Kind::ChannelsReady => "channels-ready",
            Kind::Caps => "caps",
            Kind::InitialSent => "initial-sent",
            Kind::CapsReply => "caps-reply",
            Kind::SwitchoverAck => "switchover-ack",
        }
    }

    /// The payload sizes allowed: `(min, max)`.
    pub fn length_bounds(self) -> (usize, usize) {
        match self {
            Kind::Device | Kind::Ready => (2, MAX_JSON),
            Kind::Ram => (RamInfo::SIZE, RamInfo::SIZE),
            Kind::SetupEnd => (SetupEnd::SIZE, SetupEnd::SIZE),
            Kind::RunState => (RunState::SIZE, RunState::SIZE),
            Kind::DevicePrecopy | Kind::DeviceStopCopy => (1, MAX_DEVICE_DATA),
            Kind::DeviceEnd => (DeviceEnd::SIZE, DeviceEnd::SIZE),
            Kind::Round | Kind::RoundAck => (Round::SIZE, Round::SIZE),
            Kind::Caps | Kind::CapsReply => (Caps::SIZE, Caps::SIZE),
            Kind::InitialSent | Kind::SwitchoverAck => (InitialGen::SIZE, InitialGen::SIZE),
            Kind::RamPages => (RamRun::SIZE + 1, RamRun::SIZE + MAX_RAM_RUN_BYTES),
            Kind::RamZero => (RamRun::SIZE, RamRun::SIZE),
            Kind::Verify => (Digest::SIZE, Digest::SIZE),
            Kind::Verified => (Verdict::SIZE, Verdict::SIZE),
            Kind::End => (End::SIZE, End::SIZE),
            Kind::Abort | Kind::Refuse | Kind::Failed => (0, MAX_REASON),
            Kind::Go | Kind::Accept | Kind::Running | Kind::Heartbeat => (0, 0),
            Kind::Channels => (ChannelsRequest::SIZE, ChannelsRequest::SIZE),
            Kind::ChannelHello => (ChannelHello::SIZE, ChannelHello::SIZE),
            Kind::DeviceChunk => (ChunkHead::SIZE + 1, ChunkHead::SIZE + MAX_DEVICE_DATA),
            Kind::ChannelSync | Kind::ChannelEpoch => (Epoch::SIZE, Epoch::SIZE),
            Kind::ChannelsReady => (ChannelsReady::SIZE, ChannelsReady::SIZE),
        }
    }

    /// True when the record belongs to one device (its `device` field is an
    /// index); false when it must be [`NO_DEVICE`].
    pub fn per_device(self) -> bool {
        matches!(
            self,
            Kind::Device
                | Kind::RunState
                | Kind::DevicePrecopy
                | Kind::DeviceStopCopy
                | Kind::DeviceEnd
                | Kind::DeviceChunk
                | Kind::Verify
                | Kind::InitialSent
                | Kind::SwitchoverAck
        )
    }

    /// True for the replies a live destination sends back.
    pub fn is_reply(self) -> bool {
        matches!(
            self,
            Kind::Accept
                | Kind::Refuse
                | Kind::Ready
                | Kind::Failed
                | Kind::Running
                | Kind::RoundAck
                | Kind::ChannelsReady
                | Kind::CapsReply
                | Kind::SwitchoverAck
        )
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Truncates a reason to what fits in a record.
pub fn reason_bytes(reason: &str) -> &[u8] {
    let b = reason.as_bytes();
    if b.len() <= MAX_REASON {
        return b;
    }
    let mut n = MAX_REASON;
    while !reason.is_char_boundary(n) {
        n -= 1;
    }
    &b[..n]
}
