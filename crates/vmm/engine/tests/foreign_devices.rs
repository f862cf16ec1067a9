//! The engine with devices that behave like plain vfio-user servers (not
//! ours): no status extension and no pre-copy size report. Such a device
//! may abort when it leaves STOP_COPY before its stream was read to the
//! end (libvfio-user's sample does), so a rollback from STOP_COPY first
//! reads the rest of its stream; and its pre-copy is read round by round
//! until it has nothing more.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use vfio_migrate_backend::{
    BackendError, DeviceDescriptor, DeviceStatus, MigState, MigrationDevice, PrecopyInfo,
    RegionAccess, Result,
};
use vfio_migrate_device::LocalDevice;
use vfio_migrate_engine::error::SourceState;
use vfio_migrate_engine::{
    migrate_in, migrate_out, Deadlines, DestLink, DestOptions, Link, SourceOptions,
};
use vfio_migrate_samples::vgpu::Vgpu;

mod common;
use common::{verifier, CONTROL, MIB, RENDER_RATE, SEED};

/// A vgpu seen as a foreign server: no status, no pre-copy info, and a
/// record of every time it left STOP_COPY with its stream unread.
struct Foreign {
    inner: LocalDevice<Vgpu>,
    state: MigState,
    stream_ended: bool,
    left_early: Arc<Mutex<u32>>,
}

fn foreign(name: &str, mem: u64) -> Foreign {
    Foreign {
        inner: common::vgpu(name, mem, None),
        state: MigState::Running,
        stream_ended: false,
        left_early: Arc::default(),
    }
}

impl MigrationDevice for Foreign {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn protocol(&self) -> &'static str {
        "foreign"
    }
    fn descriptor(&mut self) -> Result<DeviceDescriptor> {
        self.inner.descriptor()
    }
    fn migration_flags(&mut self) -> Result<u64> {
        self.inner.migration_flags()
    }
    fn state(&mut self) -> Result<MigState> {
        self.inner.state()
    }
    fn set_state(&mut self, new: MigState) -> Result<()> {
        if self.state == MigState::StopCopy && new != MigState::StopCopy && !self.stream_ended {
            *self.left_early.lock().unwrap() += 1;
        }
        self.inner.set_state(new)?;
        if new == MigState::StopCopy && self.state != MigState::StopCopy {
            self.stream_ended = false;
        }
        self.state = new;
        Ok(())
    }
    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        let n = self.inner.read_data(buf)?;
        if n == 0 && self.state == MigState::StopCopy {
            self.stream_ended = true;
        }
        Ok(n)
    }
    fn write_data(&mut self, data: &[u8]) -> Result<()> {
        self.inner.write_data(data)
    }
    fn precopy_info(&mut self) -> Result<PrecopyInfo> {
        Err(BackendError::unsupported(
            "pre-copy info",
            "plain vfio-user has no pre-copy size report",
        ))
    }
    fn reset(&mut self) -> Result<()> {
        self.inner.reset()
    }
    fn status(&mut self) -> Result<Option<DeviceStatus>> {
        Ok(None)
    }
    fn regions(&mut self) -> Option<&mut dyn RegionAccess> {
        self.inner.regions()
    }
}

fn wr(d: &mut Foreign, off: u64, v: u64) {
    d.inner.region_write(0, off, &v.to_le_bytes()).unwrap();
}

#[test]
fn precopy_without_a_size_report_reads_until_the_device_is_dry() {
    let mut src = foreign("src", 4 * MIB);
    let mut dst = foreign("dst", 4 * MIB);
    dst.set_state(MigState::Stop).unwrap();
    wr(&mut src, SEED, 9);
    wr(&mut src, RENDER_RATE, 16 * MIB);
    wr(&mut src, CONTROL, 1);
    let (a, b) = UnixStream::pair().unwrap();
    let (out, inn) = std::thread::scope(|s| {
        let d = &mut dst;
        let dest = s.spawn(move || {
            migrate_in(
                std::slice::from_mut(d),
                None,
                DestLink::unix(b, "src", &Deadlines::default()).unwrap(),
                DestOptions {
                    verifier: Some(verifier()),
                    ..Default::default()
                },
            )
        });
        let out = migrate_out(
            std::slice::from_mut(&mut src),
            None,
            Link::unix(a, "dst", &Deadlines::default()).unwrap(),
            SourceOptions {
                verifier: Some(verifier()),
                ..Default::default()
            },
        );
        (out, dest.join().unwrap())
    });
    let r = out.unwrap_or_else(|f| panic!("{f}"));
    inn.unwrap_or_else(|f| panic!("{f}"));
    assert!(r.verified, "{r:?}");
    assert!(r.devices[0].precopy_bytes > 0, "{r:?}");
    assert_eq!(dst.state().unwrap(), MigState::Running);
    assert_eq!(*src.left_early.lock().unwrap(), 0);
}

#[test]
fn rollback_from_stop_copy_reads_the_rest_of_the_stream_first() {
    let mut src = foreign("src", 16 * MIB);
    wr(&mut src, SEED, 3);
    let left_early = src.left_early.clone();
    let (a, mut b) = UnixStream::pair().unwrap();
    // A destination that accepts, takes 1 MiB of stop-copy data and
    // vanishes: the source is in STOP_COPY with most of its stream unread.
    let t = std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = vec![0u8; 4096];
        let _ = b.read(&mut buf).unwrap();
        let mut w = vfio_migrate_engine::format::RecordWriter::new(&mut b, "t");
        w.write_stream_header().unwrap();
        w.write(vfio_migrate_engine::format::Kind::Accept, u32::MAX, &[])
            .unwrap();
        w.flush().unwrap();
        let mut big = vec![0u8; MIB as usize];
        b.read_exact(&mut big).unwrap();
        drop(b);
    });
    let f = migrate_out(
        std::slice::from_mut(&mut src),
        None,
        Link::unix(a, "vanishing", &Deadlines::default()).unwrap(),
        SourceOptions {
            precopy: false,
            ..Default::default()
        },
    )
    .unwrap_err();
    t.join().unwrap();
    assert_eq!(f.state, SourceState::Restored, "{f}");
    assert_eq!(src.state().unwrap(), MigState::Running);
    assert_eq!(
        *left_early.lock().unwrap(),
        0,
        "the rollback left STOP_COPY before the stream was read to the end"
    );
}
