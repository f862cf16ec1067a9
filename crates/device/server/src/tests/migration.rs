//! Migration features and states, and migration data between two devices.

use super::*;

#[test]
fn features_and_states() {
    let mut srv = Server::new(TestDev::core());
    let mut s = srv.session();
    let (e, p) = feature(&mut s, FEATURE_MIGRATION | FEATURE_GET, &[], 16);
    assert_eq!(e, 0);
    assert_eq!(
        u32::from_le_bytes(p[0..4].try_into().unwrap()),
        16,
        "argsz = full reply"
    );
    assert_eq!(u64::from_le_bytes(p[8..16].try_into().unwrap()), 7);
    assert_eq!(
        feature(&mut s, FEATURE_MIGRATION | FEATURE_GET, &[], 8).0,
        libc::EINVAL,
        "argsz too small"
    );
    assert_eq!(
        feature(&mut s, FEATURE_MIGRATION | FEATURE_SET, &[], 16).0,
        libc::EINVAL
    );
    assert_eq!(feature(&mut s, 3 | FEATURE_GET, &[], 16).0, libc::ENOTTY);
    assert_eq!(
        feature(&mut s, FEATURE_MIGRATION, &[], 16).0,
        libc::EINVAL,
        "no op"
    );
    assert_eq!(
        feature(&mut s, FEATURE_MIGRATION | 1 << 20, &[], 16).0,
        libc::EINVAL,
        "unknown bits"
    );
    assert_eq!(
        feature(
            &mut s,
            FEATURE_MIG_DATA_SIZE | FEATURE_GET | FEATURE_PROBE,
            &[],
            8
        )
        .0,
        0
    );
    assert_eq!(
        feature(
            &mut s,
            FEATURE_PRECOPY_INFO | FEATURE_SET | FEATURE_PROBE,
            &[],
            8
        )
        .0,
        libc::EINVAL
    );

    for st in [
        MigState::RunningP2p,
        MigState::Stop,
        MigState::Running,
        MigState::PreCopyP2p,
        MigState::Running,
    ] {
        assert_eq!(set_state(&mut s, st), 0, "{st}");
        assert_eq!(get_state(&mut s), st as u32);
    }
    let bad = FeatureMigState {
        device_state: 8,
        data_fd: -1,
    }
    .to_bytes();
    assert_eq!(
        feature(&mut s, FEATURE_MIG_DEVICE_STATE | FEATURE_SET, &bad, 16).0,
        libc::EINVAL
    );
    assert_eq!(set_state(&mut s, MigState::Error), libc::EINVAL);
    assert_eq!(set_state(&mut s, MigState::StopCopy), 0);
    assert_eq!(
        set_state(&mut s, MigState::PreCopy),
        libc::EINVAL,
        "STOP_COPY -> PRE_COPY"
    );
    assert_eq!(get_state(&mut s), MigState::StopCopy as u32);
    assert_eq!(
        feature(&mut s, FEATURE_PRECOPY_INFO | FEATURE_GET, &[], 24).0,
        libc::EINVAL,
        "not in pre-copy"
    );
}

fn mig_read(s: &mut Session<'_, TestDev>, size: u32) -> (i32, Vec<u8>) {
    let (e, p) = call(
        s,
        Command::MigDataRead,
        &MigData {
            argsz: 8 + size,
            size,
        }
        .to_bytes(),
    );
    if e == 0 {
        let h = MigData::decode(&p).unwrap();
        assert_eq!(h.argsz as usize, p.len());
        assert_eq!(h.size as usize + 8, p.len());
        (0, p[8..].to_vec())
    } else {
        (e, p)
    }
}

fn mig_write(s: &mut Session<'_, TestDev>, data: &[u8]) -> i32 {
    let mut p = MigData {
        argsz: 8,
        size: data.len() as u32,
    }
    .to_bytes();
    p.extend_from_slice(data);
    call(s, Command::MigDataWrite, &p).0
}

#[test]
fn migration_data_between_two_devices() {
    let mut src = Server::new(TestDev::core());
    let mut dst = Server::new(TestDev::core());
    let mut s = src.session();
    let mut d = dst.session();
    call(&mut s, Command::RegionWrite, &access(0, 2, 4, b"abcd"));
    call(&mut s, Command::RegionWrite, &access(16, 0, 4, b"wxyz"));
    assert_eq!(mig_read(&mut s, 64).0, libc::EINVAL, "RUNNING");
    assert_eq!(mig_write(&mut d, b"x"), libc::EINVAL, "RUNNING");
    assert_eq!(set_state(&mut s, MigState::PreCopy), 0);
    let (e, p) = feature(&mut s, FEATURE_PRECOPY_INFO | FEATURE_GET, &[], 24);
    assert_eq!(e, 0);
    assert_eq!(
        u64::from_le_bytes(p[8..16].try_into().unwrap()),
        (8 + 64 + MEM) as u64
    );
    let (e, _) = call(
        &mut s,
        Command::MigDataRead,
        &MigData { argsz: 8, size: 64 }.to_bytes(),
    );
    assert_eq!(e, libc::EINVAL, "argsz too small for the reply");
    assert_eq!(mig_read(&mut s, 9 << 20).0, libc::E2BIG);
    assert_eq!(set_state(&mut d, MigState::Resuming), 0);
    assert_eq!(
        mig_read(&mut d, 8).0,
        libc::EINVAL,
        "RESUMING cannot be read"
    );
    let mut moved = 0;
    loop {
        let (e, data) = mig_read(&mut s, 5000);
        assert_eq!(e, 0);
        if data.is_empty() {
            break;
        }
        moved += data.len();
        assert_eq!(mig_write(&mut d, &data), 0);
    }
    assert_eq!(moved, 8 + 64 + MEM);
    assert_eq!(set_state(&mut s, MigState::StopCopy), 0);
    assert_eq!(mig_read(&mut s, 5000), (0, vec![]), "nothing changed");
    let mut bad = MigData { argsz: 8, size: 10 }.to_bytes();
    bad.extend_from_slice(&[0; 3]);
    assert_eq!(
        call(&mut d, Command::MigDataWrite, &bad).0,
        libc::EINVAL,
        "size != data"
    );
    assert_eq!(set_state(&mut d, MigState::Running), 0);
    let a = src.core().lock().unwrap().device_ref().digest();
    let b = dst.core().lock().unwrap().device_ref().digest();
    assert_eq!(a, b);
}

#[test]
fn bad_state_data_is_refused_when_resuming_ends() {
    let mut dst = Server::new(TestDev::core());
    let mut d = dst.session();
    assert_eq!(set_state(&mut d, MigState::Resuming), 0);
    assert_eq!(mig_write(&mut d, b"garbage"), 0);
    assert_eq!(set_state(&mut d, MigState::Running), libc::EINVAL);
    assert_eq!(get_state(&mut d), MigState::Resuming as u32);
}
