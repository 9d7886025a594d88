//! Sending TCP, UDP and ICMP between pods and reporting what was delivered.
//!
//! Sockets are opened on threads that entered the pod's namespace (`setns`), so the test
//! process sees exact results without parsing tool output; ICMP uses `ping`.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use genie_agent::netns;

use crate::topology::Pod;

/// How long a receiver waits after the last packet before it concludes nothing more comes.
const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// Sends `count` UDP datagrams of `payload_len` bytes from `from` to `to:port` and returns how
/// many arrived.
pub fn udp(from: &Pod, to: &Pod, port: u16, count: usize, payload_len: usize) -> Result<usize> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let to_ip = to.ipv4;
    let to_path = to.netns.path();
    let from_path = from.netns.path();
    thread::scope(|scope| {
        let receiver = scope.spawn(move || {
            netns::run_in(&to_path, move || -> Result<usize> {
                let socket = UdpSocket::bind((to_ip, port)).context("binding the UDP receiver")?;
                socket.set_read_timeout(Some(QUIET_PERIOD))?;
                ready_tx.send(()).ok();
                let mut buf = vec![0u8; 65_536];
                let mut received = 0;
                let deadline = Instant::now() + Duration::from_secs(10);
                while received < count && Instant::now() < deadline {
                    match socket.recv(&mut buf) {
                        Ok(_) => received += 1,
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            break;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(received)
            })
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("the UDP receiver in {} never got ready", to.label))?;
        netns::run_in(&from_path, move || -> Result<()> {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            let payload = vec![0x5au8; payload_len];
            for _ in 0..count {
                socket.send_to(&payload, (to_ip, port))?;
                // Pace slightly so a burst never overflows a queue: the tests count exactly.
                thread::sleep(Duration::from_micros(200));
            }
            Ok(())
        })??;
        receiver
            .join()
            .map_err(|_| anyhow!("UDP receiver panicked"))?
            .map_err(anyhow::Error::from)?
    })
}

/// Opens a TCP connection from `from` to `to:port`, sends a message and reads the echo.
/// Returns whether the exchange completed.
pub fn tcp_echo(from: &Pod, to: &Pod, port: u16) -> Result<bool> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let to_ip = to.ipv4;
    let to_path = to.netns.path();
    let from_path = from.netns.path();
    thread::scope(|scope| {
        scope.spawn(move || {
            let _ = netns::run_in(&to_path, move || -> Result<()> {
                let listener = TcpListener::bind((to_ip, port))?;
                listener.set_nonblocking(true)?;
                ready_tx.send(()).ok();
                let deadline = Instant::now() + Duration::from_secs(3);
                while Instant::now() < deadline {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            stream.set_nonblocking(false)?;
                            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                            let mut buf = [0u8; 64];
                            let n = stream.read(&mut buf)?;
                            stream.write_all(&buf[..n])?;
                            return Ok(());
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("the TCP listener in {} never got ready", to.label))?;
        netns::run_in(&from_path, move || -> Result<bool> {
            let addr = SocketAddr::from((to_ip, port));
            let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
                return Ok(false);
            };
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            let message = b"genie-echo";
            stream.write_all(message)?;
            let mut buf = [0u8; 64];
            let n = stream.read(&mut buf).unwrap_or(0);
            Ok(&buf[..n] == message)
        })?
    })
}

/// Sends `count` ICMP echo requests from `from` to `to` and returns how many replies came back.
pub fn ping(from: &Pod, to: Ipv4Addr, count: u32) -> Result<u32> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", from.netns.name(), "ping", "-q", "-n"])
        .args(["-c", &count.to_string(), "-i", "0.05", "-W", "1"])
        .arg(to.to_string())
        .output()
        .context("running ping")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|line| {
            let (_, rest) = line.split_once("transmitted, ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .with_context(|| format!("cannot read ping's summary: {stdout}"))
}
