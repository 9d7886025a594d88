//! The metrics and health endpoints over plain HTTP/1.1: `GET /metrics`, `/healthz` (the agent
//! process serves) and `/readyz` (it has a valid configuration enforced). Off unless
//! `--metrics-address` is given; bind it to localhost or a node-internal address (README,
//! "Metrics").

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use tracing::{info, warn};

use crate::agent::Agent;

/// Starts serving on `address` in a background thread.
pub fn spawn(address: SocketAddr, agent: Arc<Mutex<Agent>>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address)?;
    let bound = listener.local_addr()?;
    info!(address = %bound, "metrics listening");
    thread::Builder::new()
        .name("metrics".to_owned())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        let agent = Arc::clone(&agent);
                        let _ = thread::Builder::new()
                            .name("metrics-conn".to_owned())
                            .spawn(move || handle(stream, &agent));
                    }
                    Err(e) => warn!(error = %e, "accepting a metrics connection failed"),
                }
            }
        })?;
    Ok(bound)
}

fn handle(stream: TcpStream, agent: &Mutex<Agent>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Headers are read and ignored; nothing here needs them.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" && line != "\n" {
        line.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = if method != "GET" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        )
    } else {
        match path {
            "/metrics" => {
                let (bpffs, metrics, ready) = {
                    let agent = agent.lock().unwrap_or_else(|p| p.into_inner());
                    (
                        agent.dataplane().bpffs().to_owned(),
                        agent.metrics().clone(),
                        agent.status().ready,
                    )
                };
                match super::render(&bpffs, &metrics, ready) {
                    Ok(body) => ("200 OK", "text/plain; version=0.0.4", body),
                    Err(e) => (
                        "500 Internal Server Error",
                        "text/plain",
                        format!("reading the maps: {e}\n"),
                    ),
                }
            }
            "/healthz" => ("200 OK", "text/plain", "ok\n".to_owned()),
            "/readyz" => {
                let status = agent.lock().unwrap_or_else(|p| p.into_inner()).status();
                if status.ready {
                    ("200 OK", "text/plain", "ready\n".to_owned())
                } else {
                    (
                        "503 Service Unavailable",
                        "text/plain",
                        format!(
                            "not ready: {}\n",
                            status
                                .config_error
                                .unwrap_or_else(|| "no configuration yet".to_owned())
                        ),
                    )
                }
            }
            _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        }
    };
    let _ = write!(
        writer,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
