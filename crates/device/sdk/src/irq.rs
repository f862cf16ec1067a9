//! Interrupts: the requests a client makes about them ([`IrqRequest`], one
//! DEVICE_SET_IRQS for one IRQ index, decoded and checked by the server),
//! and [`Interrupts`], a ready-made implementation a device embeds: one
//! eventfd per vector, mask bits, level-triggered lines (INTx) and
//! edge-triggered messages (MSI).
//!
//! The semantics follow the kernel's vfio-pci, which is what a VMM's
//! vfio-user client is written against:
//!
//! - A **level** vector ([`Interrupts::set_level`]) signals its eventfd when
//!   the level rises while the vector is unmasked. With
//!   `IRQ_INFO_AUTOMASKED` it then masks itself until the client sends
//!   UNMASK; an UNMASK while the level is still high signals again. So a
//!   device that still needs service is signalled again (QEMU deasserts
//!   INTx on the guest's next BAR access and sends UNMASK).
//! - An **edge** vector ([`Interrupts::raise`]) signals at once when
//!   unmasked; raised while masked, it is remembered and signalled at the
//!   UNMASK.
//! - Nothing is signalled while no eventfd is attached: what fires then is
//!   lost (a level vector signals again when an eventfd is attached while
//!   the level is high).
//! - A client-triggered interrupt ([`IrqRequest::Trigger`]) signals the
//!   attached eventfd whatever the mask.
//!
//! Thread-safe and cheap to clone: engine threads raise interrupts while
//! the server attaches eventfds.

use crate::device::IrqDesc;
use crate::error::{DeviceError, DeviceResult};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use vfio_migrate_abi::vfio_user::IRQ_INFO_AUTOMASKED;

/// One DEVICE_SET_IRQS request for one IRQ index. The server has checked
/// that the vectors exist at that index and that the fds are eventfds.
#[derive(Debug)]
pub enum IrqRequest {
    /// Signal `fds[i]` when vector `start + i` fires (`DATA_EVENTFD |
    /// ACTION_TRIGGER` with fds). Replaces what was attached there and
    /// unmasks those vectors.
    Attach {
        /// First vector.
        start: u32,
        /// One eventfd per vector.
        fds: Vec<OwnedFd>,
    },
    /// Stop signalling vectors `start..start + count`; `count` 0 means
    /// every vector of the index (`DATA_NONE | ACTION_TRIGGER` with count
    /// 0, `DATA_EVENTFD | ACTION_TRIGGER` without fds, or the client left).
    Detach {
        /// First vector.
        start: u32,
        /// Number of vectors, 0 = all.
        count: u32,
    },
    /// Mask the vectors (`ACTION_MASK`): they do not signal until unmasked.
    Mask {
        /// First vector.
        start: u32,
        /// Number of vectors.
        count: u32,
    },
    /// Unmask the vectors (`ACTION_UNMASK`); a level still high or an edge
    /// raised meanwhile signals now.
    Unmask {
        /// First vector.
        start: u32,
        /// Number of vectors.
        count: u32,
    },
    /// Signal the vectors now, as if the device had fired them
    /// (`DATA_NONE` or `DATA_BOOL` with `ACTION_TRIGGER`).
    Trigger {
        /// First vector.
        start: u32,
        /// Number of vectors.
        count: u32,
    },
}

#[derive(Debug, Default)]
struct Vector {
    fd: Option<OwnedFd>,
    masked: bool,
    level: bool,
    pending: bool,
    signals: u64,
}

#[derive(Debug)]
struct Index {
    desc: IrqDesc,
    vectors: Vec<Vector>,
}

impl Index {
    fn automask(&self) -> bool {
        self.desc.flags & IRQ_INFO_AUTOMASKED != 0
    }

    /// Writes the eventfd of vector `v` (if any); automasks.
    fn signal(&mut self, v: usize, automask: bool) {
        let auto = automask && self.automask();
        let vec = &mut self.vectors[v];
        if let Some(fd) = &vec.fd {
            // An eventfd write only fails when the counter would overflow
            // (2^64 - 2 unread signals): the client sees an interrupt then
            // anyway.
            if let Err(e) = vfio_migrate_sys::fd::write(fd.as_fd(), &1u64.to_ne_bytes()) {
                tracing::warn!(index = self.desc.index, vector = v, error = %e, "eventfd write failed");
            }
            vec.signals += 1;
            if auto {
                vec.masked = true;
            }
        }
    }

    fn range(&self, start: u32, count: u32) -> DeviceResult<std::ops::Range<usize>> {
        let n = self.vectors.len();
        let (s, c) = (start as usize, count as usize);
        match s.checked_add(c) {
            Some(end) if end <= n => Ok(s..end),
            _ => Err(DeviceError::inval(format!(
                "IRQ vectors {start}+{count} are outside index {} ({n} vectors)",
                self.desc.index
            ))),
        }
    }
}

/// The interrupts of a device and the client's eventfds for them.
#[derive(Debug, Clone, Default)]
pub struct Interrupts {
    inner: Arc<Mutex<Vec<Index>>>,
}

impl Interrupts {
    /// Interrupts with the given indices (at most one description per
    /// index), nothing attached.
    pub fn new(descs: &[IrqDesc]) -> Self {
        let indices = descs
            .iter()
            .map(|d| Index {
                desc: *d,
                vectors: (0..d.count).map(|_| Vector::default()).collect(),
            })
            .collect();
        Self {
            inner: Arc::new(Mutex::new(indices)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Index>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is offered, for [`crate::Device::irqs`].
    pub fn descs(&self) -> Vec<IrqDesc> {
        self.lock().iter().map(|i| i.desc).collect()
    }

    /// Carries out a client's request, for [`crate::Device::set_irqs`].
    pub fn apply(&self, index: u32, req: IrqRequest) -> DeviceResult<()> {
        let mut all = self.lock();
        let ix = all
            .iter_mut()
            .find(|i| i.desc.index == index)
            .ok_or_else(|| {
                DeviceError::inval(format!("IRQ index {index} is not offered by the device"))
            })?;
        match req {
            IrqRequest::Attach { start, fds } => {
                let r = ix.range(start, fds.len() as u32)?;
                for (v, fd) in r.zip(fds) {
                    let vec = &mut ix.vectors[v];
                    vec.fd = Some(fd);
                    vec.masked = false;
                    vec.pending = false;
                    if vec.level {
                        ix.signal(v, true);
                    }
                }
            }
            IrqRequest::Detach { start, count } => {
                let r = if count == 0 {
                    0..ix.vectors.len()
                } else {
                    ix.range(start, count)?
                };
                for v in &mut ix.vectors[r] {
                    v.fd = None;
                    v.masked = false;
                    v.pending = false;
                }
            }
            IrqRequest::Mask { start, count } => {
                for v in ix.range(start, count)? {
                    ix.vectors[v].masked = true;
                }
            }
            IrqRequest::Unmask { start, count } => {
                for v in ix.range(start, count)? {
                    let vec = &mut ix.vectors[v];
                    vec.masked = false;
                    if vec.level || vec.pending {
                        vec.pending = false;
                        ix.signal(v, true);
                    }
                }
            }
            IrqRequest::Trigger { start, count } => {
                for v in ix.range(start, count)? {
                    ix.signal(v, false);
                }
            }
        }
        Ok(())
    }

    fn with_vector(&self, index: u32, vector: u32, f: impl FnOnce(&mut Index, usize)) {
        let mut all = self.lock();
        match all.iter_mut().find(|i| i.desc.index == index) {
            Some(ix) if (vector as usize) < ix.vectors.len() => f(ix, vector as usize),
            _ => tracing::warn!(
                index,
                vector,
                "device raised an interrupt it does not offer"
            ),
        }
    }

    /// Edge-triggered (MSI): fires vector `vector` of `index` now, or at
    /// the unmask when masked. Lost when no eventfd is attached.
    pub fn raise(&self, index: u32, vector: u32) {
        self.with_vector(index, vector, |ix, v| {
            if ix.vectors[v].fd.is_none() {
                return;
            }
            if ix.vectors[v].masked {
                ix.vectors[v].pending = true;
            } else {
                ix.signal(v, true);
            }
        });
    }

    /// Level-triggered (INTx): sets the line's level; a rise while
    /// unmasked signals (see the module documentation).
    pub fn set_level(&self, index: u32, vector: u32, high: bool) {
        self.with_vector(index, vector, |ix, v| {
            let vec = &mut ix.vectors[v];
            let rise = high && !vec.level;
            vec.level = high;
            if rise && !vec.masked {
                ix.signal(v, true);
            }
        });
    }

    /// The line's level as last set.
    pub fn level(&self, index: u32, vector: u32) -> bool {
        let all = self.lock();
        all.iter()
            .find(|i| i.desc.index == index)
            .and_then(|i| i.vectors.get(vector as usize))
            .is_some_and(|v| v.level)
    }

    /// How many vectors of `index` have an eventfd attached.
    pub fn attached(&self, index: u32) -> usize {
        let all = self.lock();
        all.iter()
            .find(|i| i.desc.index == index)
            .map_or(0, |i| i.vectors.iter().filter(|v| v.fd.is_some()).count())
    }

    /// How many times vector `vector` of `index` signalled its eventfd.
    pub fn signals(&self, index: u32, vector: u32) -> u64 {
        let all = self.lock();
        all.iter()
            .find(|i| i.desc.index == index)
            .and_then(|i| i.vectors.get(vector as usize))
            .map_or(0, |v| v.signals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_migrate_abi::vfio_user::{
        IRQ_INFO_EVENTFD, IRQ_INFO_MASKABLE, IRQ_INFO_NORESIZE, PCI_INTX_IRQ_INDEX,
        PCI_MSI_IRQ_INDEX,
    };

    fn irqs() -> Interrupts {
        Interrupts::new(&[
            IrqDesc {
                index: PCI_INTX_IRQ_INDEX,
                count: 1,
                flags: IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_AUTOMASKED,
            },
            IrqDesc {
                index: PCI_MSI_IRQ_INDEX,
                count: 2,
                flags: IRQ_INFO_EVENTFD | IRQ_INFO_MASKABLE | IRQ_INFO_NORESIZE,
            },
        ])
    }

    /// Reads (and clears) an eventfd's counter; 0 when nothing is pending.
    fn take(fd: &OwnedFd) -> u64 {
        use std::io::Read;
        vfio_migrate_sys::fd::set_nonblocking(fd.as_fd()).unwrap();
        let mut b = [0u8; 8];
        match std::fs::File::from(fd.try_clone().unwrap()).read(&mut b) {
            Ok(8) => u64::from_ne_bytes(b),
            _ => 0,
        }
    }

    fn attach(i: &Interrupts, index: u32, start: u32, n: usize) -> Vec<OwnedFd> {
        let fds: Vec<OwnedFd> = (0..n)
            .map(|_| vfio_migrate_sys::fd::eventfd().unwrap())
            .collect();
        let dup = fds.iter().map(|f| f.try_clone().unwrap()).collect();
        i.apply(index, IrqRequest::Attach { start, fds: dup })
            .unwrap();
        fds
    }

    #[test]
    fn level_signals_on_rise_automasks_and_resignals_on_unmask() {
        let i = irqs();
        i.set_level(0, 0, true); // nothing attached: nothing to signal
        let fd = attach(&i, 0, 0, 1).remove(0);
        assert_eq!(take(&fd), 1, "attached while high: signalled");
        i.set_level(0, 0, false);
        i.set_level(0, 0, true);
        assert_eq!(take(&fd), 0, "automasked until UNMASK");
        i.apply(0, IrqRequest::Unmask { start: 0, count: 1 })
            .unwrap();
        assert_eq!(take(&fd), 1, "still high at UNMASK: signalled again");
        i.set_level(0, 0, false);
        i.apply(0, IrqRequest::Unmask { start: 0, count: 1 })
            .unwrap();
        assert_eq!(take(&fd), 0, "low at UNMASK: quiet");
        i.set_level(0, 0, true);
        assert_eq!(take(&fd), 1, "a new rise");
        assert_eq!(i.signals(0, 0), 3);
        i.apply(0, IrqRequest::Detach { start: 0, count: 0 })
            .unwrap();
        assert_eq!(i.attached(0), 0);
        i.apply(0, IrqRequest::Unmask { start: 0, count: 1 })
            .unwrap();
        assert_eq!(take(&fd), 0, "detached");
        assert!(i.level(0, 0));
    }

    #[test]
    fn edges_wait_for_the_unmask_and_triggers_ignore_masks() {
        let i = irqs();
        i.raise(1, 1); // nothing attached: lost
        let fds = attach(&i, 1, 0, 2);
        i.raise(1, 1);
        i.raise(1, 1);
        assert_eq!((take(&fds[0]), take(&fds[1])), (0, 2));
        i.apply(1, IrqRequest::Mask { start: 0, count: 2 }).unwrap();
        i.raise(1, 0);
        assert_eq!(take(&fds[0]), 0, "masked");
        i.apply(1, IrqRequest::Trigger { start: 1, count: 1 })
            .unwrap();
        assert_eq!(take(&fds[1]), 1, "client trigger ignores the mask");
        i.apply(1, IrqRequest::Unmask { start: 0, count: 2 })
            .unwrap();
        assert_eq!((take(&fds[0]), take(&fds[1])), (1, 0), "pending edge");
        i.apply(1, IrqRequest::Detach { start: 1, count: 1 })
            .unwrap();
        assert_eq!(i.attached(1), 1);
    }

    #[test]
    fn bad_requests_are_refused() {
        let i = irqs();
        let e = i
            .apply(2, IrqRequest::Mask { start: 0, count: 1 })
            .unwrap_err();
        assert!(e.message.contains("not offered"), "{e}");
        let e = i
            .apply(1, IrqRequest::Mask { start: 1, count: 2 })
            .unwrap_err();
        assert!(e.message.contains("outside index 1"), "{e}");
        i.raise(2, 0); // not offered: logged, nothing else
        i.set_level(0, 5, true);
        assert!(!i.level(0, 5));
    }
}
