//! Sizes and field offsets of every wire struct, checked against the
//! numbers in the specs and, where `vfio-bindings` has the same struct,
//! against its `#[repr(C)]` layout.

use std::mem::{offset_of, size_of};
use vfio_bindings::bindings::vfio as vb;
use vfio_migrate_abi::{kernel, seed, v1, vfio_user as vu};

fn offsets(f: Vec<(&'static str, usize, usize)>) -> Vec<(&'static str, usize)> {
    f.into_iter().map(|(n, o, _)| (n, o)).collect()
}

#[test]
fn vfio_user_layouts() {
    assert_eq!(vu::Header::SIZE, 16);
    assert_eq!(
        offsets(vu::Header::fields()),
        vec![
            ("msg_id", 0),
            ("cmd", 2),
            ("msg_size", 4),
            ("flags", 8),
            ("error_no", 12)
        ]
    );
    assert_eq!(vu::Version::SIZE, 4);
    assert_eq!(vu::DmaMap::SIZE, 32);
    assert_eq!(
        offsets(vu::DmaMap::fields()),
        vec![
            ("argsz", 0),
            ("flags", 4),
            ("offset", 8),
            ("addr", 16),
            ("size", 24)
        ]
    );
    assert_eq!(vu::DmaUnmap::SIZE, 24);
    assert_eq!(
        offsets(vu::DmaUnmap::fields()),
        vec![("argsz", 0), ("flags", 4), ("addr", 8), ("size", 16)]
    );
    assert_eq!(vu::DeviceInfo::SIZE, 16);
    assert_eq!(vu::RegionInfo::SIZE, 32);
    assert_eq!(
        offsets(vu::RegionInfo::fields()),
        vec![
            ("argsz", 0),
            ("flags", 4),
            ("index", 8),
            ("cap_offset", 12),
            ("size", 16),
            ("offset", 24)
        ]
    );
    assert_eq!(vu::CapHeader::SIZE, 8);
    assert_eq!(vu::CapType::SIZE, 8);
    assert_eq!(vu::CapSparseMmap::SIZE, 8);
    assert_eq!(vu::SparseMmapArea::SIZE, 16);
    assert_eq!(vu::RegionAccess::SIZE, 16);
    assert_eq!(
        offsets(vu::RegionAccess::fields()),
        vec![("offset", 0), ("region", 8), ("count", 12)]
    );
    assert_eq!(vu::DmaAccess::SIZE, 16);
    assert_eq!(vu::IrqInfo::SIZE, 16);
    assert_eq!(vu::IrqSet::SIZE, 20);
    assert_eq!(vu::MigData::SIZE, 8);
}

#[test]
fn vfio_user_structs_match_kernel_bindings() {
    // vfio-user's DEVICE_GET_INFO carries the kernel struct without the later
    // `cap_offset` extension.
    assert_eq!(
        vu::DeviceInfo::SIZE,
        offset_of!(vb::vfio_device_info, cap_offset)
    );
    assert_eq!(vu::RegionInfo::SIZE, size_of::<vb::vfio_region_info>());
    for (name, off) in offsets(vu::RegionInfo::fields()) {
        let theirs = match name {
            "argsz" => offset_of!(vb::vfio_region_info, argsz),
            "flags" => offset_of!(vb::vfio_region_info, flags),
            "index" => offset_of!(vb::vfio_region_info, index),
            "cap_offset" => offset_of!(vb::vfio_region_info, cap_offset),
            "size" => offset_of!(vb::vfio_region_info, size),
            "offset" => offset_of!(vb::vfio_region_info, offset),
            _ => unreachable!(),
        };
        assert_eq!(off, theirs, "vfio_region_info.{name}");
    }
    assert_eq!(vu::CapHeader::SIZE, size_of::<vb::vfio_info_cap_header>());
    // Our capability bodies exclude the 8-byte header the kernel structs embed.
    assert_eq!(
        vu::CapHeader::SIZE + vu::CapType::SIZE,
        size_of::<vb::vfio_region_info_cap_type>()
    );
    assert_eq!(
        offset_of!(vb::vfio_region_info_cap_type, type_),
        vu::CapHeader::SIZE
    );
    assert_eq!(
        vu::SparseMmapArea::SIZE,
        size_of::<vb::vfio_region_sparse_mmap_area>()
    );
    assert_eq!(vu::IrqInfo::SIZE, size_of::<vb::vfio_irq_info>());
    assert_eq!(vu::IrqSet::SIZE, offset_of!(vb::vfio_irq_set, data));
    assert_eq!(
        vu::REGION_INFO_CAP_SPARSE_MMAP as u32,
        vb::VFIO_REGION_INFO_CAP_SPARSE_MMAP
    );
    assert_eq!(
        vu::REGION_INFO_CAP_TYPE as u32,
        vb::VFIO_REGION_INFO_CAP_TYPE
    );
    assert_eq!(
        vu::PCI_CONFIG_REGION_INDEX,
        vb::VFIO_PCI_CONFIG_REGION_INDEX
    );
    assert_eq!(vu::PCI_NUM_REGIONS, vb::VFIO_PCI_NUM_REGIONS);
}

#[test]
fn kernel_v2_layouts_match_bindings() {
    assert_eq!(kernel::DeviceFeature::SIZE, 8);
    assert_eq!(
        kernel::DeviceFeature::SIZE,
        size_of::<vb::vfio_device_feature>()
    );
    assert_eq!(
        kernel::FeatureMigration::SIZE,
        size_of::<vb::vfio_device_feature_migration>()
    );
    assert_eq!(kernel::FeatureMigState::SIZE, 8);
    assert_eq!(
        kernel::FeatureMigState::SIZE,
        size_of::<vb::vfio_device_feature_mig_state>()
    );
    assert_eq!(
        offsets(kernel::FeatureMigState::fields()),
        vec![
            (
                "device_state",
                offset_of!(vb::vfio_device_feature_mig_state, device_state)
            ),
            (
                "data_fd",
                offset_of!(vb::vfio_device_feature_mig_state, data_fd)
            ),
        ]
    );
    assert_eq!(kernel::PrecopyInfo::SIZE, 24);
    assert_eq!(
        kernel::PrecopyInfo::SIZE,
        size_of::<vb::vfio_precopy_info>()
    );
    assert_eq!(
        offsets(kernel::PrecopyInfo::fields()),
        vec![
            ("argsz", offset_of!(vb::vfio_precopy_info, argsz)),
            ("flags", offset_of!(vb::vfio_precopy_info, flags)),
            (
                "initial_bytes",
                offset_of!(vb::vfio_precopy_info, initial_bytes)
            ),
            (
                "dirty_bytes",
                offset_of!(vb::vfio_precopy_info, dirty_bytes)
            ),
        ]
    );
    assert_eq!(
        kernel::FeatureMigDataSize::SIZE,
        size_of::<vb::vfio_device_feature_mig_data_size>()
    );
    assert_eq!(kernel::DmaLoggingControl::SIZE, 24);
    assert_eq!(
        kernel::DmaLoggingControl::SIZE,
        size_of::<vb::vfio_device_feature_dma_logging_control>()
    );
    assert_eq!(
        offsets(kernel::DmaLoggingControl::fields()),
        vec![
            (
                "page_size",
                offset_of!(vb::vfio_device_feature_dma_logging_control, page_size)
            ),
            (
                "num_ranges",
                offset_of!(vb::vfio_device_feature_dma_logging_control, num_ranges)
            ),
            (
                "rsvd",
                offset_of!(vb::vfio_device_feature_dma_logging_control, __reserved)
            ),
            (
                "ranges",
                offset_of!(vb::vfio_device_feature_dma_logging_control, ranges)
            ),
        ]
    );
    assert_eq!(
        kernel::DmaLoggingRange::SIZE,
        size_of::<vb::vfio_device_feature_dma_logging_range>()
    );
    assert_eq!(kernel::DmaLoggingReport::SIZE, 32);
    assert_eq!(
        kernel::DmaLoggingReport::SIZE,
        size_of::<vb::vfio_device_feature_dma_logging_report>()
    );
    assert_eq!(
        kernel::IommuDmaMap::SIZE,
        size_of::<vb::vfio_iommu_type1_dma_map>()
    );
    assert_eq!(
        kernel::GroupStatus::SIZE,
        size_of::<vb::vfio_group_status>()
    );

    assert_eq!(kernel::FEATURE_GET, vb::VFIO_DEVICE_FEATURE_GET);
    assert_eq!(kernel::FEATURE_SET, vb::VFIO_DEVICE_FEATURE_SET);
    assert_eq!(kernel::FEATURE_PROBE, vb::VFIO_DEVICE_FEATURE_PROBE);
    assert_eq!(kernel::FEATURE_MIGRATION, vb::VFIO_DEVICE_FEATURE_MIGRATION);
    assert_eq!(
        kernel::FEATURE_MIG_DEVICE_STATE,
        vb::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE
    );
    assert_eq!(
        kernel::FEATURE_DMA_LOGGING_START,
        vb::VFIO_DEVICE_FEATURE_DMA_LOGGING_START
    );
    assert_eq!(
        kernel::FEATURE_DMA_LOGGING_STOP,
        vb::VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP
    );
    assert_eq!(
        kernel::FEATURE_DMA_LOGGING_REPORT,
        vb::VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT
    );
    assert_eq!(
        kernel::FEATURE_MIG_DATA_SIZE,
        vb::VFIO_DEVICE_FEATURE_MIG_DATA_SIZE
    );
    assert_eq!(
        kernel::MIGRATION_STOP_COPY,
        vb::VFIO_MIGRATION_STOP_COPY as u64
    );
    assert_eq!(kernel::MIGRATION_P2P, vb::VFIO_MIGRATION_P2P as u64);
    assert_eq!(
        kernel::MIGRATION_PRE_COPY,
        vb::VFIO_MIGRATION_PRE_COPY as u64
    );
    for s in kernel::MigState::ALL {
        let theirs = match s {
            kernel::MigState::Error => vb::vfio_device_mig_state_VFIO_DEVICE_STATE_ERROR,
            kernel::MigState::Stop => vb::vfio_device_mig_state_VFIO_DEVICE_STATE_STOP,
            kernel::MigState::Running => vb::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING,
            kernel::MigState::StopCopy => vb::vfio_device_mig_state_VFIO_DEVICE_STATE_STOP_COPY,
            kernel::MigState::Resuming => vb::vfio_device_mig_state_VFIO_DEVICE_STATE_RESUMING,
            kernel::MigState::RunningP2p => vb::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING_P2P,
            kernel::MigState::PreCopy => vb::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY,
            kernel::MigState::PreCopyP2p => {
                vb::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY_P2P
            }
        };
        assert_eq!(s as u32, theirs, "{s}");
        assert_eq!(kernel::MigState::from_u32(s as u32).unwrap(), s);
    }
    assert!(kernel::MigState::from_u32(8).is_err());
}

#[test]
fn ioctl_numbers() {
    assert_eq!(kernel::VFIO_DEVICE_FEATURE, 0x3b75);
    assert_eq!(kernel::VFIO_MIG_GET_PRECOPY_INFO, 0x3b79);
    assert_eq!(kernel::VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
    assert_eq!(kernel::VFIO_SET_IOMMU, 0x3b66);
}

#[test]
fn v1_region_layout() {
    assert_eq!(v1::MigrationInfo::SIZE, 32);
    assert_eq!(
        v1::MigrationInfo::SIZE,
        size_of::<vb::vfio_device_migration_info>()
    );
    let ours = offsets(v1::MigrationInfo::fields());
    assert_eq!(
        ours,
        vec![
            (
                "device_state",
                offset_of!(vb::vfio_device_migration_info, device_state)
            ),
            (
                "reserved",
                offset_of!(vb::vfio_device_migration_info, reserved)
            ),
            (
                "pending_bytes",
                offset_of!(vb::vfio_device_migration_info, pending_bytes)
            ),
            (
                "data_offset",
                offset_of!(vb::vfio_device_migration_info, data_offset)
            ),
            (
                "data_size",
                offset_of!(vb::vfio_device_migration_info, data_size)
            ),
        ]
    );
    assert_eq!(
        [
            v1::OFF_DEVICE_STATE,
            v1::OFF_RESERVED,
            v1::OFF_PENDING_BYTES,
            v1::OFF_DATA_OFFSET,
            v1::OFF_DATA_SIZE
        ],
        [0, 4, 8, 16, 24]
    );
    assert_eq!(v1::REGION_TYPE, vb::VFIO_REGION_TYPE_MIGRATION_DEPRECATED);
    assert_eq!(
        v1::REGION_SUBTYPE,
        vb::VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED
    );
    assert_eq!(v1::STATE_RUNNING, vb::VFIO_DEVICE_STATE_V1_RUNNING);
    assert_eq!(v1::STATE_SAVING, vb::VFIO_DEVICE_STATE_V1_SAVING);
    assert_eq!(v1::STATE_RESUMING, vb::VFIO_DEVICE_STATE_V1_RESUMING);
    assert_eq!(v1::DirtyBitmapRange::SIZE, 32);
}

#[test]
fn seed_region_layout_is_packed() {
    // 4 + 4*8 + 2*8 + 3*8: the seed's struct is __attribute__((packed)).
    assert_eq!(seed::MigrationInfo::SIZE, 76);
    let o = offsets(seed::MigrationInfo::fields());
    let expect = [
        ("device_state", seed::OFF_DEVICE_STATE, 0),
        ("pending_precopy_only", seed::OFF_PENDING_PRECOPY_ONLY, 4),
        ("pending_compatible", seed::OFF_PENDING_COMPATIBLE, 12),
        ("pending_postcopy_only", seed::OFF_PENDING_POSTCOPY_ONLY, 20),
        (
            "pending_threshold_size",
            seed::OFF_PENDING_THRESHOLD_SIZE,
            28,
        ),
        ("data_offset", seed::OFF_DATA_OFFSET, 36),
        ("data_size", seed::OFF_DATA_SIZE, 44),
        ("dirty_pfns_start_addr", seed::OFF_DIRTY_START_ADDR, 52),
        ("dirty_pfns_total", seed::OFF_DIRTY_TOTAL, 60),
        ("dirty_pfns_copied", seed::OFF_DIRTY_COPIED, 68),
    ];
    assert_eq!(o.len(), expect.len());
    for ((n, off), (en, econst, eoff)) in o.into_iter().zip(expect) {
        assert_eq!(n, en);
        assert_eq!(off, eoff, "{n}");
        assert_eq!(econst, eoff as u64, "{n} constant");
    }
    assert_eq!(seed::REGION_TYPE, 1 << 30);
    for (i, s) in seed::SeedState::ALL.iter().enumerate() {
        assert_eq!(*s as u32, i as u32);
        assert_eq!(seed::SeedState::from_u32(i as u32).unwrap(), *s);
    }
    assert!(seed::SeedState::from_u32(10).is_err());
}

#[test]
fn encode_places_fields_at_their_offsets() {
    let m = seed::MigrationInfo {
        device_state: 0x11223344,
        pending_threshold_size: 0x0102030405060708,
        dirty_pfns_copied: 0xaabbccddeeff0011,
        ..Default::default()
    };
    let b = m.to_bytes();
    assert_eq!(b.len(), 76);
    assert_eq!(&b[0..4], &0x11223344u32.to_le_bytes());
    assert_eq!(&b[28..36], &0x0102030405060708u64.to_le_bytes());
    assert_eq!(&b[68..76], &0xaabbccddeeff0011u64.to_le_bytes());
    assert_eq!(seed::MigrationInfo::decode(&b).unwrap(), m);
}

#[test]
fn decode_never_panics_on_short_input() {
    for n in 0..vu::Header::SIZE {
        assert!(vu::Header::decode(&vec![0xff; n]).is_err());
    }
    for n in 0..seed::MigrationInfo::SIZE {
        assert!(seed::MigrationInfo::decode(&vec![0xff; n]).is_err());
    }
    let h = vu::Header {
        msg_size: 3,
        ..Default::default()
    };
    assert!(h.payload_len().is_err());
    let mut r = vfio_migrate_abi::Reader::new(&[1, 2, 3], "t");
    assert!(r.int::<u64>().is_err());
    assert_eq!(r.int::<u16>().unwrap(), 0x0201);
}

#[test]
fn capabilities_json() {
    let c = vu::Capabilities::from_json_bytes(
        br#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":65536,"migration":{"pgsize":4096}}}"#,
    )
    .unwrap();
    assert_eq!(c.max_msg_fds, 8);
    assert_eq!(c.max_data_xfer_size, 65536);
    assert_eq!(c.migration.as_ref().unwrap().pgsize, 4096);
    let round = vu::Capabilities::from_json_bytes(&c.to_json_bytes()).unwrap();
    assert_eq!(round, c);
    assert_eq!(
        vu::Capabilities::from_json_bytes(b"\0").unwrap(),
        vu::Capabilities::default()
    );
    assert!(vu::Capabilities::from_json_bytes(b"{not json").is_err());
    assert!(vu::Capabilities::from_json_bytes(&[0xff, 0xfe]).is_err());
    assert!(vu::Capabilities::from_json_bytes(&vec![b' '; 5000]).is_err());
}

#[test]
fn bitmap_sizes() {
    assert_eq!(kernel::bitmap_bytes(4096 * 64, 4096), Some(8));
    assert_eq!(kernel::bitmap_bytes(4096 * 65, 4096), Some(16));
    assert_eq!(kernel::bitmap_bytes(1, 4096), Some(8));
    assert_eq!(kernel::bitmap_bytes(0, 4096), Some(0));
    assert_eq!(kernel::bitmap_bytes(10, 0), None);
}
