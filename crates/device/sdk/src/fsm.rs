//! The v2 migration state machine: which states a device supports given its
//! `VFIO_MIGRATION_*` flags, the kernel's next-hop table, and path walking
//! that hands a device single arcs only.
//!
//! Unlike the kernel's `vfio_mig_get_next_state()`, the walk here never loops
//! when a hop is ERROR (STOP_COPY → PRE_COPY on a PRE_COPY device): that and
//! every other impossible request is [`FsmError`] (EINVAL).

use thiserror::Error;
use vfio_migrate_abi::kernel::{MigState, MIGRATION_P2P, MIGRATION_PRE_COPY, MIGRATION_STOP_COPY};

use MigState::*;

/// Why a requested transition cannot be made.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FsmError {
    /// ERROR can only be entered by a failure, never requested.
    #[error("ERROR cannot be requested; only a device reset leaves it")]
    ErrorRequested,
    /// The device is in ERROR; only a reset leaves it.
    #[error("the device is in ERROR; only a device reset leaves it")]
    InError,
    /// The target state needs a capability the device does not have.
    #[error("{state} is not supported by this device (migration flags {flags:#x})")]
    Unsupported {
        /// The state asked for.
        state: MigState,
        /// The device's `VFIO_MIGRATION_*` flags.
        flags: u64,
    },
    /// No path exists (e.g. STOP_COPY → PRE_COPY).
    #[error("no transition from {from} to {to}")]
    NoPath {
        /// The state the device is in.
        from: MigState,
        /// The state asked for.
        to: MigState,
    },
}

impl FsmError {
    /// The errno a kernel or vfio-user server reports for it.
    pub fn errno(&self) -> i32 {
        libc::EINVAL
    }
}

/// True when a device with `flags` supports `state`.
pub fn state_supported(flags: u64, state: MigState) -> bool {
    if flags & MIGRATION_STOP_COPY == 0 {
        return false;
    }
    let p2p = flags & MIGRATION_P2P != 0;
    let pre = flags & MIGRATION_PRE_COPY != 0;
    match state {
        Error => true,
        Stop | Running | StopCopy | Resuming => true,
        RunningP2p => p2p,
        PreCopy => pre,
        PreCopyP2p => p2p && pre,
    }
}

/// The kernel's next-hop table: the first arc from `cur` towards `new`
/// assuming every state is supported. `cur == new` returns `new`.
pub fn next_hop(cur: MigState, new: MigState) -> MigState {
    if cur == new {
        return new;
    }
    match (cur, new) {
        (Error, _) | (_, Error) => Error,
        (Running, PreCopy) => PreCopy,
        (Running, _) => RunningP2p,
        (Stop, StopCopy) => StopCopy,
        (Stop, Resuming) => Resuming,
        (Stop, _) => RunningP2p,
        (StopCopy, PreCopy) | (StopCopy, PreCopyP2p) => Error,
        (StopCopy, _) => Stop,
        (Resuming, _) => Stop,
        (RunningP2p, Running) | (RunningP2p, PreCopy) => Running,
        (RunningP2p, PreCopyP2p) => PreCopyP2p,
        (RunningP2p, _) => Stop,
        (PreCopy, StopCopy) | (PreCopy, PreCopyP2p) => PreCopyP2p,
        (PreCopy, _) => Running,
        (PreCopyP2p, StopCopy) => StopCopy,
        (PreCopyP2p, PreCopy) => PreCopy,
        (PreCopyP2p, _) => RunningP2p,
    }
}

/// The next supported arc from `cur` towards `new` for a device with
/// `flags`: unsupported intermediate states are skipped by looking up
/// again from them, as the kernel does, but an ERROR hop is an error.
pub fn next_state(flags: u64, cur: MigState, new: MigState) -> Result<MigState, FsmError> {
    if new == Error {
        return Err(FsmError::ErrorRequested);
    }
    if cur == Error {
        return Err(FsmError::InError);
    }
    if !state_supported(flags, new) {
        return Err(FsmError::Unsupported { state: new, flags });
    }
    let mut hop = cur;
    // At most one hop per state: a longer chain would be a cycle.
    for _ in 0..MigState::ALL.len() {
        hop = next_hop(hop, new);
        if hop == Error {
            return Err(FsmError::NoPath { from: cur, to: new });
        }
        if state_supported(flags, hop) {
            return Ok(hop);
        }
    }
    Err(FsmError::NoPath { from: cur, to: new })
}

/// The whole sequence of arcs from `cur` to `new`, not including `cur`.
/// Empty when `cur == new`.
pub fn path(flags: u64, cur: MigState, new: MigState) -> Result<Vec<MigState>, FsmError> {
    if new == Error {
        return Err(FsmError::ErrorRequested);
    }
    if cur == Error {
        return Err(FsmError::InError);
    }
    for s in [cur, new] {
        if !state_supported(flags, s) {
            return Err(FsmError::Unsupported { state: s, flags });
        }
    }
    let mut out = Vec::new();
    let mut at = cur;
    while at != new {
        let n = next_state(flags, at, new)?;
        out.push(n);
        at = n;
        if out.len() > MigState::ALL.len() {
            return Err(FsmError::NoPath { from: cur, to: new });
        }
    }
    Ok(out)
}

/// The arcs a device must implement (the kernel's `vfio_mig_get_next_state`
/// yields only these): every pair `(from, to)` that appears in some path.
pub fn is_valid_arc(flags: u64, from: MigState, to: MigState) -> bool {
    MigState::ALL.iter().any(|&target| {
        state_supported(flags, from)
            && next_state(flags, from, target).ok() == Some(to)
            && from != to
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_FLAGS: u64 = MIGRATION_STOP_COPY | MIGRATION_P2P | MIGRATION_PRE_COPY;

    #[test]
    fn documented_examples() {
        assert_eq!(
            path(ALL_FLAGS, PreCopy, Stop).unwrap(),
            vec![Running, RunningP2p, Stop]
        );
        assert_eq!(
            path(MIGRATION_STOP_COPY, Running, Resuming).unwrap(),
            vec![Stop, Resuming]
        );
        assert_eq!(
            path(ALL_FLAGS, StopCopy, PreCopy),
            Err(FsmError::NoPath {
                from: StopCopy,
                to: PreCopy
            })
        );
        assert_eq!(
            path(ALL_FLAGS, Running, Error),
            Err(FsmError::ErrorRequested)
        );
    }

    /// Every flag set × current state × target: either a path whose every
    /// arc is single, supported and consistent with the table, or EINVAL for
    /// exactly the cases the kernel forbids.
    #[test]
    fn exhaustive() {
        let mut checked = 0;
        for flags in 0..8u64 {
            for cur in MigState::ALL {
                for new in MigState::ALL {
                    checked += 1;
                    let r = path(flags, cur, new);
                    let supported = state_supported(flags, cur) && state_supported(flags, new);
                    if new == Error || cur == Error || !supported {
                        assert!(r.is_err(), "{flags} {cur}->{new} must fail");
                        continue;
                    }
                    let saving_cur = matches!(cur, StopCopy);
                    let to_precopy = matches!(new, PreCopy | PreCopyP2p);
                    if saving_cur && to_precopy {
                        assert_eq!(
                            r,
                            Err(FsmError::NoPath { from: cur, to: new }),
                            "{flags} {cur}->{new}"
                        );
                        continue;
                    }
                    let p = r.unwrap_or_else(|e| panic!("{flags} {cur}->{new}: {e}"));
                    if cur == new {
                        assert!(p.is_empty());
                        continue;
                    }
                    assert_eq!(*p.last().unwrap(), new);
                    let mut at = cur;
                    for &hop in &p {
                        assert!(
                            state_supported(flags, hop),
                            "{flags} {cur}->{new} via {hop}"
                        );
                        assert_ne!(hop, Error);
                        // Each arc is the table's next hop after skipping
                        // unsupported states.
                        let mut h = next_hop(at, new);
                        while !state_supported(flags, h) {
                            h = next_hop(h, new);
                        }
                        assert_eq!(h, hop, "{flags} {cur}->{new} at {at}");
                        assert!(is_valid_arc(flags, at, hop));
                        at = hop;
                    }
                    // No state repeats.
                    let mut seen = p.clone();
                    seen.push(cur);
                    seen.sort();
                    seen.dedup();
                    assert_eq!(seen.len(), p.len() + 1, "{flags} {cur}->{new} loops: {p:?}");
                }
            }
        }
        assert_eq!(checked, 8 * 8 * 8);
    }

    #[test]
    fn table_matches_protocol_facts() {
        // Rows of the kernel table (cur x new), new in this column order.
        let cols = [
            Running, Stop, StopCopy, Resuming, RunningP2p, PreCopy, PreCopyP2p,
        ];
        let rows: [(MigState, [MigState; 7]); 7] = [
            (
                Running,
                [
                    Running, RunningP2p, RunningP2p, RunningP2p, RunningP2p, PreCopy, RunningP2p,
                ],
            ),
            (
                Stop,
                [
                    RunningP2p, Stop, StopCopy, Resuming, RunningP2p, RunningP2p, RunningP2p,
                ],
            ),
            (StopCopy, [Stop, Stop, StopCopy, Stop, Stop, Error, Error]),
            (Resuming, [Stop, Stop, Stop, Resuming, Stop, Stop, Stop]),
            (
                RunningP2p,
                [Running, Stop, Stop, Stop, RunningP2p, Running, PreCopyP2p],
            ),
            (
                PreCopy,
                [
                    Running, Running, PreCopyP2p, Running, Running, PreCopy, PreCopyP2p,
                ],
            ),
            (
                PreCopyP2p,
                [
                    RunningP2p, RunningP2p, StopCopy, RunningP2p, RunningP2p, PreCopy, PreCopyP2p,
                ],
            ),
        ];
        for (cur, row) in rows {
            for (new, want) in cols.iter().zip(row) {
                assert_eq!(next_hop(cur, *new), want, "{cur}->{new}");
            }
        }
    }

    #[test]
    fn stop_copy_only_paths() {
        let f = MIGRATION_STOP_COPY;
        assert_eq!(path(f, Running, StopCopy).unwrap(), vec![Stop, StopCopy]);
        assert_eq!(path(f, StopCopy, Running).unwrap(), vec![Stop, Running]);
        assert_eq!(path(f, Resuming, Running).unwrap(), vec![Stop, Running]);
        assert!(path(f, Running, PreCopy).is_err());
        assert!(path(f, Running, RunningP2p).is_err());
    }

    #[test]
    fn precopy_without_p2p() {
        let f = MIGRATION_STOP_COPY | MIGRATION_PRE_COPY;
        assert_eq!(path(f, Running, PreCopy).unwrap(), vec![PreCopy]);
        assert_eq!(path(f, PreCopy, StopCopy).unwrap(), vec![StopCopy]);
        assert_eq!(path(f, PreCopy, Stop).unwrap(), vec![Running, Stop]);
    }
}
