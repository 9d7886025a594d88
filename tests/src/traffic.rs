//! Sending TCP, UDP and ICMP between pods and reporting what was delivered.
//!
//! Sockets are opened on threads that entered the pod's namespace (`setns`), so the test
//! process sees exact results without parsing tool output; ICMP uses `ping`.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use genie_agent::netns;

use crate::topology::{Netns, Pod};

/// Something traffic can be sent from or to: a namespace and an address in it.
pub trait Reachable: Sync {
    fn label(&self) -> &str;
    fn netns(&self) -> &Netns;
    fn ipv4(&self) -> Ipv4Addr;
    /// The address traffic is sent to (and bound at): the IPv4 one unless said otherwise.
    fn address(&self) -> IpAddr {
        IpAddr::V4(self.ipv4())
    }
}

/// A namespace at any one of its addresses (IPv6 included).
#[derive(Debug, Clone, Copy)]
pub struct AtIp<'a> {
    pub netns: &'a Netns,
    pub ip: IpAddr,
}

impl Reachable for AtIp<'_> {
    fn label(&self) -> &str {
        "address"
    }
    fn netns(&self) -> &Netns {
        self.netns
    }
    fn ipv4(&self) -> Ipv4Addr {
        // 0.0.0.0 would reach the local host and make a positive check pass.
        match self.ip {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => panic!("{v6} has no IPv4 address: use `address()`"),
        }
    }
    fn address(&self) -> IpAddr {
        self.ip
    }
}

impl Reachable for Pod {
    fn label(&self) -> &str {
        &self.label
    }
    fn netns(&self) -> &Netns {
        &self.netns
    }
    fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }
}

/// The node itself, at one of its addresses.
#[derive(Debug, Clone, Copy)]
pub struct NodeAt<'a> {
    pub netns: &'a Netns,
    pub ipv4: Ipv4Addr,
}

impl<T: Reachable + ?Sized> Reachable for &T {
    fn label(&self) -> &str {
        (**self).label()
    }
    fn netns(&self) -> &Netns {
        (**self).netns()
    }
    fn ipv4(&self) -> Ipv4Addr {
        (**self).ipv4()
    }
    fn address(&self) -> IpAddr {
        (**self).address()
    }
}

impl Reachable for NodeAt<'_> {
    fn label(&self) -> &str {
        "node"
    }
    fn netns(&self) -> &Netns {
        self.netns
    }
    fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }
}

/// How long a TCP connect may take before the flow counts as blocked. Allowed connections
/// between namespaces complete in well under a millisecond.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a receiver waits after the last packet before it concludes nothing more comes.
const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// Runs a server on a thread inside `netns`: `bind` there first, then `serve` with what it
/// bound. Returns once bound, so senders never race the listener; a bind error is reported
/// as such instead of as a server that never got ready.
fn serve_in<S, R>(
    netns: &Netns,
    what: &str,
    bind: impl FnOnce() -> std::io::Result<S> + Send + 'static,
    serve: impl FnOnce(S) -> R + Send + 'static,
) -> Result<thread::JoinHandle<Option<R>>>
where
    S: 'static,
    R: Send + 'static,
{
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let path = netns.path();
    let handle = thread::spawn(move || {
        netns::run_in(&path, move || match bind() {
            Ok(bound) => {
                ready_tx.send(Ok(())).ok();
                Some(serve(bound))
            }
            Err(e) => {
                ready_tx.send(Err(e.to_string())).ok();
                None
            }
        })
        .ok()
        .flatten()
    });
    match ready_rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(anyhow!("the {what} in {} cannot listen: {e}", netns.name())),
        Err(_) => Err(anyhow!("the {what} in {} never got ready", netns.name())),
    }
}

/// Opens a TCP connection from inside `from`'s namespace; the socket then works from any
/// thread.
fn connect_from(
    from: &(impl Reachable + ?Sized),
    to: IpAddr,
    port: u16,
) -> Result<std::io::Result<TcpStream>> {
    Ok(netns::run_in(&from.netns().path(), move || {
        TcpStream::connect_timeout(&SocketAddr::from((to, port)), CONNECT_TIMEOUT)
    })?)
}

/// Sends `count` UDP datagrams of `payload_len` bytes from `from` to `to:port` and returns how
/// many arrived.
pub fn udp(
    from: &(impl Reachable + ?Sized),
    to: &(impl Reachable + ?Sized),
    port: u16,
    count: usize,
    payload_len: usize,
) -> Result<usize> {
    let to_ip = to.address();
    let receiver = serve_in(
        to.netns(),
        "UDP receiver",
        move || {
            let socket = UdpSocket::bind((to_ip, port))?;
            socket.set_read_timeout(Some(QUIET_PERIOD))?;
            Ok(socket)
        },
        move |socket| -> std::io::Result<usize> {
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
                    Err(e) => return Err(e),
                }
            }
            Ok(received)
        },
    )?;
    netns::run_in(&from.netns().path(), move || -> Result<()> {
        let socket = match to_ip {
            IpAddr::V4(_) => UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?,
            IpAddr::V6(_) => UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))?,
        };
        let payload = vec![0x5au8; payload_len];
        for _ in 0..count {
            socket.send_to(&payload, (to_ip, port))?;
            // Pace slightly so a burst never overflows a queue: the tests count exactly.
            thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    })??;
    let received = receiver
        .join()
        .map_err(|_| anyhow!("UDP receiver panicked"))?
        .context("the UDP receiver thread failed")??;
    Ok(received)
}

/// Opens a TCP connection from `from` to `to:port` (where an [`EchoServer`] is started for
/// the occasion), sends a message and reads the echo. Returns whether the exchange completed.
pub fn tcp_echo(
    from: &(impl Reachable + ?Sized),
    to: &(impl Reachable + ?Sized),
    port: u16,
) -> Result<bool> {
    let _server = EchoServer::start(to, port)?;
    tcp_connect_echo(from, to.address(), port)
}

/// Sends `count` ICMP echo requests from `from` to `to` and returns how many replies came back.
pub fn ping(from: &(impl Reachable + ?Sized), to: impl Into<IpAddr>, count: u32) -> Result<u32> {
    let to: IpAddr = to.into();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", from.netns().name(), "ping", "-q", "-n"])
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

/// A long-lived TCP connection to an echo server, for checking that an established connection
/// keeps (or stops) working.
#[derive(Debug)]
pub struct EchoConnection {
    stream: TcpStream,
    server: Option<thread::JoinHandle<Option<std::io::Result<()>>>>,
}

impl EchoConnection {
    /// Starts an echo server in `to` and connects to it from `from`.
    pub fn open(
        from: &(impl Reachable + ?Sized),
        to: &(impl Reachable + ?Sized),
        port: u16,
    ) -> Result<Self> {
        let to_ip = to.address();
        let server = serve_in(
            to.netns(),
            "echo server",
            move || TcpListener::bind((to_ip, port)),
            |listener| -> std::io::Result<()> {
                let (mut conn, _) = listener.accept()?;
                let mut buf = [0u8; 4096];
                loop {
                    let n = conn.read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    conn.write_all(&buf[..n])?;
                }
            },
        )?;
        let stream = connect_from(from, to_ip, port)??;
        Ok(Self {
            stream,
            server: Some(server),
        })
    }

    /// Sends `message` and waits up to `timeout` for its echo. A socket opened inside a
    /// namespace keeps working from any thread.
    pub fn round_trip(&mut self, message: &[u8], timeout: Duration) -> bool {
        if self.stream.write_all(message).is_err() {
            return false;
        }
        let _ = self.stream.set_read_timeout(Some(timeout));
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + timeout;
        while got.len() < message.len() && Instant::now() < deadline {
            match self.stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got.starts_with(message)
    }
}

impl Drop for EchoConnection {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        // The server thread ends when the connection does (or on its own error).
        drop(self.server.take());
    }
}

/// What a [`Stream`] observed.
#[derive(Debug, Clone)]
pub struct StreamReport {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// The longest time between two reads at the receiver.
    pub max_gap: Duration,
    /// A send or receive error (a reset), if any.
    pub error: Option<String>,
}

/// A paced TCP stream from one place to another, running until stopped.
#[derive(Debug)]
pub struct Stream {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sender: thread::JoinHandle<Result<u64, String>>,
    receiver: thread::JoinHandle<Option<(u64, Duration, Option<String>)>>,
}

impl Stream {
    /// Starts sending `chunk` bytes every `interval` from `from` to `to:port`.
    pub fn start(
        from: &(impl Reachable + ?Sized),
        to: &(impl Reachable + ?Sized),
        port: u16,
        chunk: usize,
        interval: Duration,
    ) -> Result<Self> {
        use std::sync::{Arc, atomic::AtomicBool};
        let to_ip = to.address();
        let receiver = serve_in(
            to.netns(),
            "stream receiver",
            move || TcpListener::bind((to_ip, port)),
            |listener| -> (u64, Duration, Option<String>) {
                let (mut conn, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(e) => return (0, Duration::ZERO, Some(e.to_string())),
                };
                let mut buf = vec![0u8; 65536];
                let mut total = 0u64;
                let mut last = Instant::now();
                let mut max_gap = Duration::ZERO;
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) => return (total, max_gap, None),
                        Ok(n) => {
                            total += n as u64;
                            max_gap = max_gap.max(last.elapsed());
                            last = Instant::now();
                        }
                        Err(e) => return (total, max_gap, Some(e.to_string())),
                    }
                }
            },
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let stream = connect_from(from, to_ip, port)??;
        let stop_flag = Arc::clone(&stop);
        let sender = thread::spawn(move || {
            let mut stream = stream;
            let payload = vec![0x42u8; chunk];
            let mut sent = 0u64;
            while !stop_flag.load(std::sync::atomic::Ordering::Relaxed) {
                stream.write_all(&payload).map_err(|e| e.to_string())?;
                sent += payload.len() as u64;
                thread::sleep(interval);
            }
            stream
                .shutdown(std::net::Shutdown::Write)
                .map_err(|e| e.to_string())?;
            Ok(sent)
        });
        Ok(Self {
            stop,
            sender,
            receiver,
        })
    }

    /// Stops sending, waits for the receiver to drain, and reports.
    pub fn stop(self) -> StreamReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let sent = self
            .sender
            .join()
            .unwrap_or_else(|_| Err("sender panicked".to_owned()));
        let (received, max_gap, rx_error) = self.receiver.join().ok().flatten().unwrap_or((
            0,
            Duration::ZERO,
            Some("receiver thread failed".to_owned()),
        ));
        let (bytes_sent, error) = match sent {
            Ok(n) => (n, rx_error),
            Err(e) => (0, Some(format!("send: {e}"))),
        };
        StreamReport {
            bytes_sent,
            bytes_received: received,
            max_gap,
            error,
        }
    }
}

/// A TCP echo server that accepts any number of connections until dropped.
#[derive(Debug)]
pub struct EchoServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<thread::JoinHandle<Option<()>>>,
}

impl EchoServer {
    /// Listens on `at:port` inside `at`'s namespace.
    pub fn start(at: &(impl Reachable + ?Sized), port: u16) -> Result<Self> {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        };
        let ip = at.address();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let handle = serve_in(
            at.netns(),
            "echo server",
            move || {
                let listener = TcpListener::bind((ip, port))?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            },
            move |listener| {
                while !stop_flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut conn, _)) => {
                            thread::spawn(move || {
                                let _ = conn.set_nonblocking(false);
                                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                                let mut buf = [0u8; 4096];
                                while let Ok(n) = conn.read(&mut buf) {
                                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => return,
                    }
                }
            },
        )?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Connects from `from` to `to:port`, sends a message and reads the echo (needs an
/// [`EchoServer`] there). Returns whether the exchange completed.
pub fn tcp_connect_echo(
    from: &(impl Reachable + ?Sized),
    to: impl Into<IpAddr>,
    port: u16,
) -> Result<bool> {
    let Ok(mut stream) = connect_from(from, to.into(), port)? else {
        return Ok(false);
    };
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let message = b"genie-echo";
    stream.write_all(message)?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).unwrap_or(0);
    Ok(&buf[..n] == message)
}

/// What an iperf3 run measured at the receiver.
#[derive(Debug, Clone)]
pub struct IperfReport {
    /// Goodput over the whole run, bits/s.
    pub bits_per_second: f64,
    /// Goodput in the first second, bits/s.
    pub first_second: f64,
    /// TCP retransmissions the sender counted (`None` for UDP, which has none to count; a TCP
    /// report without them is an error, not zero).
    pub retransmits: Option<u64>,
    /// Goodput of each second as the receiver counted it, bits/s.
    pub intervals: Vec<f64>,
}

/// Runs one iperf3 test from `from` to `to:port` for `seconds` and returns what arrived: TCP,
/// or UDP offered at `udp_bits_per_second` in 1400-byte datagrams.
pub fn iperf3(
    from: &(impl Reachable + ?Sized),
    to: &(impl Reachable + ?Sized),
    port: u16,
    seconds: u32,
    udp_bits_per_second: Option<u64>,
) -> Result<IperfReport> {
    let udp: Vec<String> = match udp_bits_per_second {
        Some(rate) => vec![
            "-u".into(),
            "-b".into(),
            rate.to_string(),
            "-l".into(),
            "1400".into(),
        ],
        None => Vec::new(),
    };
    let mut server = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            to.netns().name(),
            "iperf3",
            "-s",
            "-1",
            "-J",
        ])
        .args(["-B", &to.address().to_string(), "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting the iperf3 server")?;
    // The server binds within milliseconds; the client retries its connection meanwhile.
    let mut output = None;
    for _ in 0..50 {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", from.netns().name(), "iperf3", "-J"])
            .args(["-c", &to.address().to_string(), "-p", &port.to_string()])
            .args(["-t", &seconds.to_string(), "--get-server-output"])
            .args(&udp)
            .output()
            .context("running the iperf3 client")?;
        // iperf3 -J reports a refused connection (the server not listening yet) in its JSON.
        let refused = String::from_utf8_lossy(&out.stdout).contains("unable to connect");
        if out.status.success() && !refused {
            output = Some(out);
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    let out = output.context("the iperf3 client never connected")?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed non-JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    if let Some(error) = report.get("error") {
        anyhow::bail!("iperf3 failed: {error}");
    }
    let number = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    // The receiving server's intervals: the client's count bytes written into its socket, not
    // delivered.
    let intervals: Vec<f64> = report["server_output_json"]["intervals"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|i| number(&i["sum"]["bits_per_second"]))
                .collect()
        })
        .unwrap_or_default();
    Ok(IperfReport {
        bits_per_second: number(&report["end"]["sum_received"]["bits_per_second"]),
        first_second: intervals.first().copied().unwrap_or(0.0),
        retransmits: match (
            udp_bits_per_second,
            report["end"]["sum_sent"]["retransmits"].as_u64(),
        ) {
            (Some(_), _) => None,
            (None, Some(n)) => Some(n),
            (None, None) => anyhow::bail!(
                "iperf3's TCP report has no retransmit count: {}",
                report["end"]["sum_sent"]
            ),
        },
        intervals,
    })
}

/// Opens TCP connections from `from` to `to:port` (where a listener must run) as fast as
/// `threads` parallel connectors can for `duration`, closing each at once. Returns how many
/// completed their handshake.
pub fn connection_flood(
    from: &(impl Reachable + ?Sized),
    to: Ipv4Addr,
    port: u16,
    threads: usize,
    duration: Duration,
) -> Result<u64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let accepted = AtomicU64::new(0);
    let path = from.netns().path();
    let deadline = Instant::now() + duration;
    thread::scope(|scope| {
        for _ in 0..threads {
            let (path, accepted) = (&path, &accepted);
            scope.spawn(move || {
                netns::run_in(path, || {
                    while Instant::now() < deadline {
                        let attempt = TcpStream::connect_timeout(
                            &SocketAddr::from((to, port)),
                            Duration::from_millis(250),
                        );
                        if attempt.is_ok() {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            });
        }
    });
    Ok(accepted.load(Ordering::Relaxed))
}
