//! The fault matrix: each fault × each phase × unix and tcp, from fresh
//! device servers, with real processes over real sockets. Every cell
//! checks that `migrate` exits within its deadline (2 s of a signal or a
//! killed peer; the stall timeout for a peer that hangs) with the right
//! exit code and a message naming the phase; that the source device is
//! back RUNNING with its state unchanged by digest (stopped where its
//! server cannot know the outcome); that the destination never runs on
//! partial state and is not left in RESUMING; and that a second migration
//! of the same source then succeeds. See `world.rs`.

#[path = "../support/mod.rs"]
mod support;
mod world;

use world::{cell, Fault::*, Phase::*, Transport::*};

/// Cells start processes and time their deadlines: two at a time at most,
/// so that a loaded machine does not eat the margins.
fn slot() -> std::sync::MutexGuard<'static, ()> {
    static SLOTS: [std::sync::Mutex<()>; 2] =
        [std::sync::Mutex::new(()), std::sync::Mutex::new(())];
    loop {
        for s in &SLOTS {
            if let Ok(g) = s.try_lock() {
                return g;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

macro_rules! cells {
    ($($name:ident: $t:expr, $p:expr, $f:expr;)*) => {$(
        #[test]
        fn $name() {
            cell($t, $p, $f);
        }
    )*};
}

cells! {
    unix_setup_kill_migrate: Unix, Setup, KillMigrate;
    unix_setup_term_migrate: Unix, Setup, TermMigrate;
    unix_setup_kill_source: Unix, Setup, KillSource;
    unix_setup_kill_dest: Unix, Setup, KillDest;
    unix_setup_stop_dest: Unix, Setup, StopDest;
    unix_precopy_kill_migrate: Unix, PreCopy, KillMigrate;
    unix_precopy_term_migrate: Unix, PreCopy, TermMigrate;
    unix_precopy_kill_source: Unix, PreCopy, KillSource;
    unix_precopy_kill_dest: Unix, PreCopy, KillDest;
    unix_precopy_stop_dest: Unix, PreCopy, StopDest;
    unix_stopcopy_kill_migrate: Unix, StopCopy, KillMigrate;
    unix_stopcopy_term_migrate: Unix, StopCopy, TermMigrate;
    unix_stopcopy_kill_source: Unix, StopCopy, KillSource;
    unix_stopcopy_kill_dest: Unix, StopCopy, KillDest;
    unix_stopcopy_stop_dest: Unix, StopCopy, StopDest;
    unix_resume_kill_migrate: Unix, Resume, KillMigrate;
    unix_resume_term_migrate: Unix, Resume, TermMigrate;
    unix_resume_kill_source: Unix, Resume, KillSource;
    unix_resume_kill_dest: Unix, Resume, KillDest;
    unix_resume_stop_dest: Unix, Resume, StopDest;
    tcp_setup_kill_migrate: Tcp, Setup, KillMigrate;
    tcp_setup_term_migrate: Tcp, Setup, TermMigrate;
    tcp_setup_kill_source: Tcp, Setup, KillSource;
    tcp_setup_kill_dest: Tcp, Setup, KillDest;
    tcp_setup_kill_receive: Tcp, Setup, KillReceive;
    tcp_setup_stop_receive: Tcp, Setup, StopDest;
    tcp_precopy_kill_migrate: Tcp, PreCopy, KillMigrate;
    tcp_precopy_term_migrate: Tcp, PreCopy, TermMigrate;
    tcp_precopy_kill_source: Tcp, PreCopy, KillSource;
    tcp_precopy_kill_dest: Tcp, PreCopy, KillDest;
    tcp_precopy_kill_receive: Tcp, PreCopy, KillReceive;
    tcp_precopy_stop_receive: Tcp, PreCopy, StopDest;
    tcp_stopcopy_kill_migrate: Tcp, StopCopy, KillMigrate;
    tcp_stopcopy_term_migrate: Tcp, StopCopy, TermMigrate;
    tcp_stopcopy_kill_source: Tcp, StopCopy, KillSource;
    tcp_stopcopy_kill_dest: Tcp, StopCopy, KillDest;
    tcp_stopcopy_kill_receive: Tcp, StopCopy, KillReceive;
    tcp_stopcopy_stop_receive: Tcp, StopCopy, StopDest;
    tcp_resume_kill_migrate: Tcp, Resume, KillMigrate;
    tcp_resume_term_migrate: Tcp, Resume, TermMigrate;
    tcp_resume_kill_source: Tcp, Resume, KillSource;
    tcp_resume_kill_dest: Tcp, Resume, KillDest;
    tcp_resume_kill_receive: Tcp, Resume, KillReceive;
    tcp_resume_stop_receive: Tcp, Resume, StopDest;
}
