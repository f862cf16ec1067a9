//! Config space against what the device offers, for both samples: a VMM
//! such as QEMU decides from config space (INTx from the interrupt pin, MSI
//! from the MSI capability, BAR kinds from the BARs), other clients from
//! GET_IRQ_INFO and GET_REGION_INFO. The two must say the same.

use super::*;

/// IRQ info of `index`: (flags, count).
fn irq(c: &mut Conn, index: u32) -> (u32, u32) {
    let r = c.call(DEVICE_GET_IRQ_INFO, &le!(16u32, 0u32, index, 0u32), &[]);
    let p = r.ok();
    (u32_at(p, 4), u32_at(p, 12))
}

/// Region size of `index` (the full reply).
fn region_size(c: &mut Conn, index: u32) -> u64 {
    let r = c.call(
        DEVICE_GET_REGION_INFO,
        &le!(4096u32, 0u32, index, 0u32, 0u64, 0u64),
        &[],
    );
    u64_at(r.ok(), 16)
}

fn check_device(c: &mut Conn, name: &str) {
    let cfg = c.read(7, 0, 256);
    // INTx: the pin says whether there is one (QEMU reads only the pin).
    let pin = cfg[0x3d];
    let (flags, count) = irq(c, 0);
    assert_eq!(
        count,
        u32::from(pin != 0),
        "{name}: pin {pin} vs INTx count"
    );
    if count > 0 {
        // As the kernel reports INTx: eventfd, maskable, automasked.
        assert_eq!(flags & 0b111, 0b111, "{name}: INTx flags {flags:#x}");
    }
    // Capabilities: MSI and MSI-X vectors as announced.
    let (mut msi, mut msix) = (0u32, 0u32);
    if u16_at(&cfg, 6) & 0x10 != 0 {
        let mut at = cfg[0x34] as usize;
        let mut seen = 0;
        while at != 0 {
            assert!(
                (0x40..0x100).contains(&at) && at.is_multiple_of(4),
                "{name}: cap at {at:#x}"
            );
            seen += 1;
            assert!(seen < 48, "{name}: capability list loops");
            match cfg[at] {
                0x05 => msi = 1 << ((u16_at(&cfg, at + 2) >> 1) & 7),
                0x11 => msix = u32::from(u16_at(&cfg, at + 2) & 0x7ff) + 1,
                _ => {}
            }
            at = cfg[at + 1] as usize;
        }
    } else {
        assert_eq!(
            cfg[0x34], 0,
            "{name}: capability pointer without the status bit"
        );
    }
    assert_eq!(irq(c, 1).1, msi, "{name}: MSI vectors");
    assert_eq!(irq(c, 2).1, msix, "{name}: MSI-X vectors");
    if msi > 0 {
        assert_ne!(irq(c, 1).0 & 1, 0, "{name}: MSI by eventfd");
    }
    // BARs: sized by writing all-ones, as a guest does; each must match
    // its region, the upper half of a 64-bit BAR has no region.
    let mut bar = 0;
    while bar < 6 {
        let at = 0x10 + 4 * bar as u64;
        let old = c.read(7, at, 8);
        c.write(7, at, &[0xff; 8]);
        let back = c.read(7, at, 8);
        c.write(7, at, &old);
        let lo = u32_at(&back, 0);
        let size = region_size(c, bar);
        if lo == 0 {
            assert_eq!(
                size, 0,
                "{name}: BAR{bar} absent but region {bar} has {size} bytes"
            );
            bar += 1;
            continue;
        }
        let wide = lo & 0b111 == 0b100;
        let mask = if lo & 1 != 0 {
            u64::from(lo & !3) | 0xffff_ffff_0000_0000
        } else if wide {
            u64::from(lo & !0xf) | (u64::from(u32_at(&back, 4)) << 32)
        } else {
            u64::from(lo & !0xf) | 0xffff_ffff_0000_0000
        };
        assert_eq!(!mask + 1, size, "{name}: BAR{bar} size vs region {bar}");
        if wide {
            assert_eq!(region_size(c, bar + 1), 0, "{name}: upper half of BAR{bar}");
            bar += 1;
        }
        bar += 1;
    }
    assert_eq!(region_size(c, 6), 0, "{name}: no expansion ROM");
    assert_eq!(u32_at(&cfg, 0x30), 0, "{name}: ROM BAR empty");
}

#[test]
fn config_space_says_what_the_device_offers() {
    let srv = Server::start();
    let mut c = srv.session();
    check_device(&mut c, "vgpu");
    drop(c);
    let serial = Served::start("serial", None);
    let mut c = session_on(&serial.path);
    check_device(&mut c, "serial");
}
