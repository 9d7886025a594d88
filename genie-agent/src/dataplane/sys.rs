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
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;
// `enum bpf_link_type`.
const BPF_LINK_TYPE_TCX: u32 = 11;

/// The `BPF_OBJ_*` member of `union bpf_attr`.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// The `link_detach` member of `union bpf_attr`.
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
