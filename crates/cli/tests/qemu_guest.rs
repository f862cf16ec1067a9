//! Peer suite `tests/peers/qemu.sh`: QEMU's vfio-user client (QEMU 10.2.2,
//! `vfio-user-pci`) attaches two real `vfio-migrate serve` processes — a
//! vgpu and a serial — to one TCG guest, and a static program inside the
//! guest (`tests/peers/qemu/guest.c`) drives both devices the way a guest
//! driver would. See `docs/qemu.md`.
//!
//! Every test here is `#[ignore]`d: it needs the QEMU the suite builds with
//! the kit in `../shared/peers/qemu` and the guest kernel and initramfs it
//! prepares, named by `VFIO_QEMU`, `VFIO_QEMU_KERNEL` and
//! `VFIO_QEMU_INITRD`. Run `./test.sh` (or `tests/peers/qemu.sh`).
//!
//! The host side checks what the guest cannot see for itself: QEMU's exit
//! status (the guest's verdict through `isa-debug-exit`), each `FAIL` line,
//! the values the guest read back from the engines recomputed with the
//! samples' own functions, the error QEMU prints for each refused access
//! (and no other complaint), the refused posted writes in the serial
//! server's log, and both servers alive afterwards and stopping cleanly.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vfio_migrate_harness::{ServerProcess, TempDir};
use vfio_migrate_samples::hash::fill_pseudo_random;
use vfio_migrate_samples::vgpu::engines::{dma_target, render_target};

const BIN: &str = env!("CARGO_BIN_EXE_vfio-migrate");

/// The whole boot, from QEMU's start to its exit, must fit in this.
const QEMU_DEADLINE: Duration = Duration::from_secs(120);

fn env_path(name: &str) -> PathBuf {
    let p = std::env::var_os(name).unwrap_or_else(|| {
        panic!(
            "{name} is not set: this test runs in the peer suite tests/peers/qemu.sh (./test.sh)"
        )
    });
    let p = PathBuf::from(p);
    assert!(p.exists(), "{name}={} does not exist", p.display());
    p
}

fn serve(device: &str, socket: &Path) -> ServerProcess {
    let mut c = Command::new(BIN);
    c.args(["serve", "--device", device, "--socket"])
        .arg(socket);
    ServerProcess::start(c, socket).unwrap_or_else(|e| panic!("{e}"))
}

/// The console without carriage returns and terminal escapes (SeaBIOS
/// clears the screen).
fn clean(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw).replace('\r', "");
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if it.peek() == Some(&'[') {
            it.next();
            while let Some(&n) = it.peek() {
                it.next();
                if n.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            it.next();
        }
    }
    out
}

/// `VALUE <what> k=v ...` lines of the guest, by `what`.
fn values(console: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut all = BTreeMap::new();
    for line in console.lines() {
        let Some(rest) = line.strip_prefix("VALUE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let what = words.next().unwrap_or_default().to_string();
        let kv = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse().expect("a number")))
            .collect();
        all.insert(what, kv);
    }
    all
}

fn first_word(seed: u64) -> u64 {
    let mut b = [0u8; 8];
    fill_pseudo_random(seed, &mut b);
    u64::from_le_bytes(b)
}

#[test]
#[ignore = "needs QEMU with vfio-user: run ./test.sh"]
fn a_qemu_guest_drives_the_vgpu_and_the_serial() {
    let qemu = env_path("VFIO_QEMU");
    let kernel = env_path("VFIO_QEMU_KERNEL");
    let initrd = env_path("VFIO_QEMU_INITRD");
    let dir = TempDir::new("qemu").expect("temp dir");
    let (vsock, ssock) = (dir.join("vgpu.sock"), dir.join("serial.sock"));
    // The README's command lines: default device memory, every protocol.
    let mut vgpu = serve("vgpu", &vsock);
    let mut serial = serve("serial", &ssock);

    let console = dir.join("console.log");
    let qerr = dir.join("qemu.stderr");
    let dev = |id: &str, sock: &Path| {
        format!(
            r#"{{"driver":"vfio-user-pci","id":"{id}","socket":{{"type":"unix","path":"{}"}}}}"#,
            sock.display()
        )
    };
    let mut cmd = Command::new(&qemu);
    cmd.args(["-accel", "tcg", "-smp", "1"])
        .args([
            "-object",
            "memory-backend-memfd,id=mem,size=512M,share=on",
            "-machine",
            "pc,memory-backend=mem",
        ])
        .args(["-L", "/usr/share/seabios", "-L", "/usr/share/qemu"])
        .args([
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet rdinit=/init"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .args(["-device", &dev("vgpu", &vsock)])
        .args(["-device", &dev("serial", &ssock)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&qerr).expect("qemu stderr file"));
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("starting QEMU");
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for QEMU") {
            break Some(s);
        }
        if t0.elapsed() > QEMU_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = t0.elapsed();
    let out = clean(&std::fs::read(&console).unwrap_or_default());
    let err = clean(&std::fs::read(&qerr).unwrap_or_default());
    let report = format!(
        "----- guest console -----\n{out}\n----- QEMU stderr -----\n{err}\n\
         ----- vgpu server -----\n{}\n----- serial server -----\n{}",
        vgpu.stderr(),
        serial.stderr()
    );
    let Some(status) = status else {
        panic!(
            "QEMU did not finish within {} s\n{report}",
            QEMU_DEADLINE.as_secs()
        );
    };
    // isa-debug-exit: guest_exit 16 = every check passed.
    assert_eq!(
        status.code(),
        Some(33),
        "QEMU exit {status} (33 = the guest passed)\n{report}"
    );
    let fails: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        fails.is_empty(),
        "guest checks failed: {fails:#?}\n{report}"
    );
    assert!(out.contains("RESULT PASS"), "no verdict line\n{report}");
    let oks = out.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(oks >= 58, "only {oks} of the 58 checks ran\n{report}");

    // What the engines wrote, recomputed with the samples' own code.
    let v = values(&out);
    let get = |what: &str, k: &str| -> u64 {
        *v.get(what)
            .and_then(|m| m.get(k))
            .unwrap_or_else(|| panic!("no VALUE {what} {k}\n{report}"))
    };
    let (seed, frame, pages) = (
        get("render", "seed"),
        get("render", "frame"),
        get("render", "pages"),
    );
    assert_eq!(pages, 256 << 8, "256 MiB of 4 KiB pages");
    let (page, fill) = render_target(seed, frame - 1, pages);
    assert_eq!(get("render", "page"), page, "render page\n{report}");
    assert_eq!(get("render", "word"), first_word(fill), "render content");
    let (dseed, steps) = (get("dma", "seed"), get("dma", "steps"));
    let (off, blk, dfill) = dma_target(dseed, steps - 1, 4096);
    assert_eq!((off, blk), (0, 4096));
    assert_eq!(
        get("dma", "word"),
        first_word(dfill),
        "DMA content\n{report}"
    );
    assert_eq!(get("msi", "frame_writes"), 3);
    assert_eq!(get("msi", "dma_write"), 1);
    assert_eq!(get("intx", "uio_count"), 2, "two INTx in the guest");
    assert!(get("intx", "proc_delta") >= 2);

    // QEMU printed an error for each refused access (reads, and the
    // vgpu's writes, which are not posted: BAR2 is mapped), and nothing
    // else but the ERR-index warning for each device.
    let (vs, ss) = (vsock.display(), ssock.display());
    let expected = [
        format!("vfio_region_read(vfio-user:{vs}:region0+0x0, 1) failed: Invalid argument"),
        format!("vfio_region_read(vfio-user:{vs}:region0+0x2, 2) failed: Invalid argument"),
        format!("vfio_region_read(vfio-user:{vs}:region0+0x800, 8) failed: Invalid argument"),
        format!("vfio_region_write(vfio-user:{vs}:region0+0x0, 0x0,8) failed: Invalid argument"),
        format!("vfio_region_write(vfio-user:{vs}:region0+0x8, 0x10,8) failed: Invalid argument"),
        format!("vfio_region_write(vfio-user:{vs}:region0+0x60, 0x55,1) failed: Invalid argument"),
        format!("vfio_region_read(vfio-user:{ss}:region0+0x0, 8) failed: Invalid argument"),
        format!("vfio_region_read(vfio-user:{ss}:region0+0x6, 2) failed: Invalid argument"),
    ];
    for e in &expected {
        assert!(
            err.contains(e.as_str()),
            "QEMU did not report `{e}`\n{report}"
        );
    }
    for line in err.lines().filter(|l| !l.trim().is_empty()) {
        let known = expected.iter().any(|e| line.contains(e.as_str()))
            || line.contains("Could not enable error recovery for the device");
        assert!(known, "unexpected QEMU message: {line}\n{report}");
    }
    assert_eq!(
        err.matches("Could not enable error recovery").count(),
        2,
        "{report}"
    );

    // The serial's refused writes were posted (no MMAP region): only its
    // server can tell, and it did. The vgpu server had nothing to warn of.
    let se = serial.stderr();
    for want in [
        "serial LSR (0x5) is read-only",
        "serial BAR0 access of 4 bytes at 0x4",
    ] {
        assert!(
            se.contains(want) && se.contains("without reply"),
            "serial server did not log `{want}`\n{report}"
        );
    }
    assert_eq!(se.matches("WARN").count(), 2, "{report}");
    assert!(!vgpu.stderr().contains("WARN"), "{report}");
    assert!(!vgpu.stderr().contains("ERROR"), "{report}");

    // Both servers outlived their client and stop cleanly.
    assert!(vgpu.alive() && serial.alive(), "{report}");
    assert_eq!(vgpu.terminate(Duration::from_secs(10)).unwrap(), Some(0));
    assert_eq!(serial.terminate(Duration::from_secs(10)).unwrap(), Some(0));
    let uptime = |marker: &str| {
        out.lines()
            .find(|l| l.contains(marker))
            .and_then(|l| l.split("uptime ").nth(1))
            .map(|u| {
                u.trim_end_matches(|c: char| !c.is_ascii_digit())
                    .to_string()
            })
            .unwrap_or_else(|| "?".into())
    };
    eprintln!(
        "QEMU guest: {oks} checks passed; guest uptime {} s at /init, {} s at the verdict; \
         QEMU ran {:.1} s",
        uptime("[init] kernel"),
        uptime("VERDICT: PASS"),
        took.as_secs_f64()
    );
}
