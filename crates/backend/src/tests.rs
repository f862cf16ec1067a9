//! Unit tests of the shared types.

use super::*;

fn desc() -> DeviceDescriptor {
    DeviceDescriptor {
        model: "vgpu".into(),
        version: "1".into(),
        vendor_id: 0x1af4,
        device_id: 0x10f0,
        subsystem_vendor_id: 0,
        subsystem_id: 0,
        revision: 1,
        migration_flags: 7,
        region_sizes: vec![4096, 1 << 28],
    }
}

#[test]
fn compatible_when_equal() {
    assert!(desc().check_compatible(&desc()).is_ok());
}

#[test]
fn region_size_mismatch_is_named() {
    let mut d = desc();
    d.region_sizes[1] = 1 << 27;
    let e = desc().check_compatible(&d).unwrap_err();
    assert!(
        e.contains("region 1 is 268435456 bytes at the source, 134217728"),
        "{e}"
    );
}

#[test]
fn errors_name_errno() {
    let e = BackendError::refused("set state STOP_COPY", libc::EINVAL, "bad arc");
    assert_eq!(
        e.to_string(),
        "set state STOP_COPY: device refused: EINVAL (errno 22): bad arc"
    );
    assert_eq!(e.errno(), Some(libc::EINVAL));
}
