//! `vfio-migrate device` against a real `serve --device serial` process:
//! bytes written into the FIFO through BAR0 come back out, state changes
//! are reported, ERROR and bad input are refused with clear errors.

mod support;

use std::process::Command;
use support::{Dir, Server};

fn vm(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_vfio-migrate"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).trim().to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

#[test]
fn device_command_pokes_and_reports() {
    let dir = Dir::new("device-cmd");
    let s = Server::start("serial", None, &dir.path("d.sock"));
    let ep = s.uri();
    let (ok, out, err) = vm(&["device", &ep, "info", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["state"], "RUNNING");
    assert_eq!(v["descriptor"]["vendor_id"], 0x1b36);
    assert_eq!(v["descriptor"]["device_id"], 0x00f1);

    for b in ["68", "69"] {
        let (ok, _, err) = vm(&["device", &ep, "write", "0", "0", b]);
        assert!(ok, "{err}");
    }
    assert_eq!(
        vm(&["device", &ep, "read", "0", "0x18", "4"]).1,
        "02000000",
        "FIFO level 2"
    );
    assert_eq!(vm(&["device", &ep, "read", "0", "0", "1"]).1, "68");
    assert_eq!(vm(&["device", &ep, "read", "0", "0", "1"]).1, "69");

    let (ok, out, err) = vm(&["device", &ep, "set-state", "stop"]);
    assert!(ok, "{err}");
    assert_eq!(out, "STOP");
    assert_eq!(vm(&["device", &ep, "state"]).1, "STOP");

    let (ok, _, err) = vm(&["device", &ep, "set-state", "ERROR"]);
    assert!(!ok);
    assert!(err.contains("EINVAL"), "{err}");
    assert_eq!(vm(&["device", &ep, "set-state", "RUNNING"]).1, "RUNNING");

    let (ok, _, err) = vm(&["device", &ep, "read", "0", "0x1000", "8"]);
    assert!(!ok);
    assert!(err.contains("read region 0 at 0x1000"), "{err}");
    let (ok, _, err) = vm(&["device", &ep, "write", "0", "0", "xyz"]);
    assert!(!ok && err.contains("hex"), "{err}");
    let (ok, _, err) = vm(&["device", "file:/tmp/x.snap", "state"]);
    assert!(!ok && err.contains("not a device"), "{err}");
}
