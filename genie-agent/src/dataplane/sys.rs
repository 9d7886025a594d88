//! The `bpf(2)` commands aya 0.14 does not wrap in a usable form.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

// `enum bpf_cmd` in uapi/linux/bpf.h.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;
const BPF_LINK_DETACH: libc::c_long = 34;
// `enum bpf_map_type`.
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
// `enum bpf_link_type`.
const BPF_LINK_TYPE_TCX: u32 = 11;

/// The `BPF_OBJ_*` member of `union bpf_attr`.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// The map-element member of `union bpf_attr` (`map_fd`, `key`, `value`, `flags`).
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The `BPF_MAP_CREATE` member of `union bpf_attr`, up to `map_extra`.
#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
    btf_fd: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
    btf_vmlinux_value_type_id: u32,
    map_extra: u64,
}

/// `struct bpf_map_info` up to `btf_value_type_id`.
#[repr(C, align(8))]
#[derive(Default)]
struct MapInfo {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    name: [u8; 16],
    ifindex: u32,
    btf_vmlinux_value_type_id: u32,
    netns_dev: u64,
    netns_ino: u64,
    btf_id: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
    _pad: u32,
}

/// The `*_GET_FD_BY_ID` member of `union bpf_attr`.
#[repr(C)]
struct GetFdByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// The link-detach member of `union bpf_attr`.
#[repr(C)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// The `info` member of `union bpf_attr`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_link_info` up to its `tcx` member: `type`, `id`, `prog_id`, then the union,
/// which is 8-byte aligned (it holds `__aligned_u64` members), so `tcx.ifindex` is at 16.
#[repr(C, align(8))]
#[derive(Default)]
struct LinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    tcx_ifindex: u32,
    tcx_attach_type: u32,
    // The rest of the union; the kernel writes at most `info_len` bytes.
    _rest: [u64; 4],
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a fully initialised prefix of `union bpf_attr` for `cmd`, of the size
    // passed; the kernel reads at most that many bytes and zero-extends the rest.
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_ref(attr), size_of::<T>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Empties slot `index` of an array of maps (aya 0.14's `ArrayOfMaps` has no remove); the
/// kernel frees the inner map once no program holds it. Emptying an empty slot succeeds.
pub fn map_of_maps_clear(map: &impl std::os::fd::AsFd, index: u32) -> io::Result<()> {
    let attr = MapElemAttr {
        map_fd: u32::try_from(map.as_fd().as_raw_fd()).map_err(io::Error::other)?,
        _pad: 0,
        key: std::ptr::from_ref(&index) as u64,
        value: 0,
        flags: 0,
    };
    match bpf(BPF_MAP_DELETE_ELEM, &attr) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other.map(|_| ()),
    }
}

/// The BTF object a map was created with, as a descriptor (`None` for a map without BTF).
pub fn map_btf(map: &impl std::os::fd::AsFd) -> io::Result<Option<OwnedFd>> {
    let mut info = MapInfo::default();
    let attr = InfoAttr {
        bpf_fd: u32::try_from(map.as_fd().as_raw_fd()).map_err(io::Error::other)?,
        info_len: u32::try_from(size_of::<MapInfo>()).map_err(io::Error::other)?,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &attr)?;
    if info.btf_id == 0 {
        return Ok(None);
    }
    let attr = GetFdByIdAttr {
        id: info.btf_id,
        next_id: 0,
        open_flags: 0,
    };
    let fd = i32::try_from(bpf(BPF_BTF_GET_FD_BY_ID, &attr)?).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Creates an LRU hash map named `name` (at most 15 bytes), with its key and value described
/// by the types `btf` names (so `bpftool` prints their fields), or without BTF.
pub fn create_lru_hash(
    name: &str,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    btf: Option<(&OwnedFd, u32, u32)>,
) -> io::Result<OwnedFd> {
    let mut map_name = [0u8; 16];
    let bytes = name.as_bytes();
    map_name[..bytes.len().min(15)].copy_from_slice(&bytes[..bytes.len().min(15)]);
    let (btf_fd, key_id, value_id) = match btf {
        Some((fd, key, value)) => (
            u32::try_from(fd.as_raw_fd()).map_err(io::Error::other)?,
            key,
            value,
        ),
        None => (0, 0, 0),
    };
    let attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_LRU_HASH,
        key_size,
        value_size,
        max_entries,
        map_flags: 0,
        inner_map_fd: 0,
        numa_node: 0,
        map_name,
        map_ifindex: 0,
        btf_fd,
        btf_key_type_id: key_id,
        btf_value_type_id: value_id,
        btf_vmlinux_value_type_id: 0,
        map_extra: 0,
    };
    let fd = i32::try_from(bpf(BPF_MAP_CREATE, &attr)?).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a pinned BPF object.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &attr)?;
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Detaches a link from its hook now (the link object lives on, defunct, until closed).
pub fn link_detach(link: &OwnedFd) -> io::Result<()> {
    let attr = LinkDetachAttr {
        link_fd: u32::try_from(link.as_raw_fd()).map_err(io::Error::other)?,
    };
    bpf(BPF_LINK_DETACH, &attr).map(|_| ())
}

/// The interface a TCX link is attached to; 0 once it was detached (`bpftool link detach`,
/// or its interface was deleted). Errors for links that are not TCX links.
pub fn tcx_link_ifindex(link: &OwnedFd) -> io::Result<u32> {
    let mut info = LinkInfo::default();
    let attr = InfoAttr {
        bpf_fd: u32::try_from(link.as_raw_fd()).map_err(io::Error::other)?,
        info_len: u32::try_from(size_of::<LinkInfo>()).map_err(io::Error::other)?,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &attr)?;
    if info.link_type != BPF_LINK_TYPE_TCX {
        return Err(io::Error::other(format!(
            "link {} is of type {}, not TCX",
            info.id, info.link_type
        )));
    }
    Ok(info.tcx_ifindex)
}
