//! Traffic below unicast TCP: UDP to broadcast and multicast groups from ordinary sockets,
//! and raw Ethernet frames sent and captured with packet sockets — what an attacker with
//! `CAP_NET_RAW` in a pod can do.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use genie_agent::netns;

use crate::topology::Netns;

/// The index and IPv4 address of `ifname` in the calling thread's namespace.
fn interface(ifname: &str) -> Result<(u32, Option<Ipv4Addr>)> {
    let index =
        nix::net::if_::if_nametoindex(ifname).with_context(|| format!("no interface {ifname}"))?;
    let v4 = nix::ifaddrs::getifaddrs()?
        .filter(|a| a.interface_name == ifname)
        .find_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()));
    Ok((index, v4))
}

/// Datagrams received: sender and payload.
type Received = Arc<Mutex<Vec<(SocketAddr, Vec<u8>)>>>;

/// A UDP socket bound to the wildcard address on one port, member of some multicast groups
/// on one interface, that records every datagram it receives.
#[derive(Debug)]
pub struct GroupListener {
    received: Received,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl GroupListener {
    /// Listens on `[::]` or `0.0.0.0` (`v6`) port `port` in `netns`, joined to `groups` on
    /// `ifname`. Broadcasts to the port arrive without joining anything.
    pub fn start(netns: &Netns, ifname: &str, port: u16, groups: &[IpAddr]) -> Result<Self> {
        let ifname = ifname.to_owned();
        let groups = groups.to_vec();
        let v6 = groups.iter().any(IpAddr::is_ipv6);
        let socket = netns::run_in(&netns.path(), move || -> Result<UdpSocket> {
            let socket = if v6 {
                UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port))?
            } else {
                UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?
            };
            let (index, v4) = interface(&ifname)?;
            for group in &groups {
                match group {
                    IpAddr::V4(g) => socket.join_multicast_v4(
                        g,
                        &v4.with_context(|| format!("{ifname} has no IPv4 address"))?,
                    )?,
                    IpAddr::V6(g) => socket.join_multicast_v6(g, index)?,
                }
            }
            socket.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok(socket)
        })??;
        let received: Received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (received, stop) = (Arc::clone(&received), Arc::clone(&stop));
            thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = socket.recv_from(&mut buf) {
                        received
                            .lock()
                            .expect("received")
                            .push((from, buf[..n].to_vec()));
                    }
                }
            })
        };
        Ok(Self {
            received,
            stop,
            handle: Some(handle),
        })
    }

    /// The payloads received so far that start with `marker`.
    pub fn count(&self, marker: &[u8]) -> usize {
        self.received
            .lock()
            .expect("received")
            .iter()
            .filter(|(_, p)| p.starts_with(marker))
            .count()
    }
}

impl Drop for GroupListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Sends `count` datagrams `payload` from `netns` (out of `ifname`, from its address) to
/// `to:port`: a broadcast, multicast or unicast address, as an application would (broadcast
/// allowed, multicast TTL/hop limit 1 on that interface).
pub fn send_udp(
    netns: &Netns,
    ifname: &str,
    to: IpAddr,
    port: u16,
    payload: &[u8],
    count: usize,
) -> Result<()> {
    let ifname = ifname.to_owned();
    let payload = payload.to_vec();
    netns::run_in(&netns.path(), move || -> Result<()> {
        let (index, v4) = interface(&ifname)?;
        let socket = match to {
            IpAddr::V4(_) => {
                let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                socket.set_broadcast(true)?;
                socket.set_multicast_ttl_v4(1)?;
                if let Some(v4) = v4 {
                    set_multicast_if_v4(&socket, v4)?;
                }
                socket
            }
            IpAddr::V6(_) => {
                let socket = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))?;
                set_multicast_if_v6(&socket, index)?;
                socket
            }
        };
        for _ in 0..count {
            let target = match to {
                IpAddr::V6(v6)
                    if v6.segments()[0] & 0xff00 == 0xff00 || v6.is_unicast_link_local() =>
                {
                    SocketAddr::V6(std::net::SocketAddrV6::new(v6, port, 0, index))
                }
                other => SocketAddr::new(other, port),
            };
            socket.send_to(&payload, target)?;
            thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    })?
}

fn set_multicast_if_v4(socket: &UdpSocket, address: Ipv4Addr) -> Result<()> {
    let value = libc::in_addr {
        s_addr: u32::from_ne_bytes(address.octets()),
    };
    setsockopt(socket, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &value)
}

fn set_multicast_if_v6(socket: &UdpSocket, index: u32) -> Result<()> {
    setsockopt(socket, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, &index)
}

fn setsockopt<T>(socket: &UdpSocket, level: i32, name: i32, value: &T) -> Result<()> {
    // SAFETY: `value` points at a `T` of the size passed, alive for the call.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if ret != 0 {
        bail!("setsockopt: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A packet socket (`AF_PACKET`, every protocol) on one interface: sends Ethernet frames as
/// given and sees every frame the interface receives.
#[derive(Debug)]
pub struct RawSocket {
    fd: OwnedFd,
    index: u32,
}

impl RawSocket {
    /// Opens one on `ifname` in `netns`.
    pub fn open(netns: &Netns, ifname: &str) -> Result<Self> {
        let ifname = ifname.to_owned();
        netns::run_in(&netns.path(), move || -> Result<Self> {
            let (index, _) = interface(&ifname)?;
            let protocol = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: a plain socket(2) call; the descriptor is owned below.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
            if fd < 0 {
                bail!("packet socket: {}", std::io::Error::last_os_error());
            }
            // SAFETY: socket(2) just returned this descriptor and nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: `sockaddr_ll` is plain data; zeroed is a valid starting value.
            let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_protocol = protocol;
            address.sll_ifindex = index as i32;
            // SAFETY: `address` is a valid sockaddr_ll of the size passed.
            let ret = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    std::ptr::from_ref(&address).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if ret != 0 {
                bail!(
                    "binding the packet socket: {}",
                    std::io::Error::last_os_error()
                );
            }
            let timeout = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            // SAFETY: `timeout` is a timeval of the size passed.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    std::ptr::from_ref(&timeout).cast(),
                    size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            Ok(Self { fd, index })
        })?
    }

    /// Sends one frame as it is (Ethernet header included).
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: `sockaddr_ll` is plain data; zeroed is a valid starting value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_ifindex = self.index as i32;
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `frame` is readable for its length; `address` is a valid sockaddr_ll.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::from_ref(&address).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            bail!("sending a frame: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// How many frames containing `marker` the interface received within `window`.
    pub fn count_received(&self, marker: &[u8], window: Duration) -> usize {
        let deadline = std::time::Instant::now() + window;
        let mut buf = [0u8; 4096];
        let mut n = 0;
        while std::time::Instant::now() < deadline {
            // SAFETY: `buf` is writable for its length.
            let got =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if got > 0
                && buf[..got as usize]
                    .windows(marker.len())
                    .any(|w| w == marker)
            {
                n += 1;
            }
        }
        n
    }
}
