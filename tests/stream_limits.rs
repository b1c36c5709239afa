//! Limits of SIP over TCP against the real binary: slowloris connections from many
//! addresses are closed by the message deadline while SIPp calls over UDP and TCP from
//! another address go through, and the cap on all stream connections holds.
//! Needs the private network namespace (scripts/test-isolated.sh): the attackers use
//! 127.0.0.10-59.

mod common;

use common::{require_tool, Server};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn completed(calls: &[serde_json::Value], transport: &str) -> usize {
    calls
        .iter()
        .filter(|c| {
            c["transport"] == transport
                && c["end_reason"] == "caller-bye"
                && c["answered_at"].is_string()
        })
        .count()
}

fn sipp_uac(target: SocketAddr, transport: &str, calls: u32) -> std::process::Output {
    let port = common::free_udp_port().to_string();
    let media = common::free_udp_port().to_string();
    Command::new("sipp")
        .args(["-sn", "uac", &target.to_string(), "-i", "127.0.0.1"])
        .args(["-t", transport, "-r", "4", "-m", &calls.to_string()])
        .args(["-l", "4", "-d", "1000", "-p", &port, "-mp", &media])
        .args(["-nostdin", "-timeout", "60s", "-timeout_error"])
        .output()
        .expect("run sipp")
}

/// Opens a connection from `source`, sends the start of a request and then one byte
/// every `every`; returns the time from the first byte to the server's close.
async fn slowloris(source: IpAddr, server: SocketAddr, every: Duration) -> Option<Duration> {
    let sock = tokio::net::TcpSocket::new_v4().ok()?;
    sock.bind(SocketAddr::new(source, 0)).ok()?;
    let mut stream = sock.connect(server).await.ok()?;
    let started = Instant::now();
    stream.write_all(b"OPTIONS sip:x SIP/2.0\r\n").await.ok()?;
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => {} // A response would be a bug; the timing check catches it.
            },
            _ = tokio::time::sleep(every) => {
                if stream.write_all(b"X").await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            return None;
        }
    }
}

#[test]
fn slowloris_from_50_addresses_is_closed_by_the_deadline_while_calls_go_on() {
    if !require_tool("sipp") {
        return;
    }
    let server = Server::start(&[]);
    let tcp = server.tcp;
    let rt = tokio::runtime::Runtime::new().unwrap();
    // 500 connections, 10 from each of 127.0.0.10..=59, one byte every 2 s.
    let attackers = rt.spawn(async move {
        let mut tasks = Vec::new();
        for i in 0..500u32 {
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + (i / 10) as u8));
            tasks.push(tokio::spawn(slowloris(source, tcp, Duration::from_secs(2))));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.ok().flatten());
        }
        out
    });
    std::thread::sleep(Duration::from_millis(500));
    let udp = server.udp;
    let udp_calls = std::thread::spawn(move || sipp_uac(udp, "u1", 40));
    let tcp_calls = sipp_uac(tcp, "t1", 40);
    let udp_calls = udp_calls.join().unwrap();
    for (name, out) in [("udp", &udp_calls), ("tcp", &tcp_calls)] {
        assert!(
            out.status.success(),
            "sipp over {name} failed while under slowloris:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let closed = rt.block_on(attackers).unwrap();
    assert_eq!(closed.len(), 500);
    let held: Vec<Duration> = closed
        .iter()
        .map(|c| c.expect("every slowloris connection is closed within 60 s"))
        .collect();
    let min = held.iter().min().unwrap();
    let max = held.iter().max().unwrap();
    println!("500 slowloris connections held {min:?} .. {max:?}");
    assert!(
        *min >= Duration::from_millis(9500),
        "closed before the deadline: {min:?}"
    );
    assert!(
        *max <= Duration::from_secs(14),
        "closed late (deadline 10 s): {max:?}"
    );
    let calls = server.wait_calls(Duration::from_secs(10), |c| {
        completed(c, "UDP") >= 40 && completed(c, "TCP") >= 40
    });
    assert_eq!(completed(&calls, "UDP"), 40);
    assert_eq!(completed(&calls, "TCP"), 40);
    server.assert_no_panic();
}

#[test]
fn stream_connections_past_the_cap_are_closed_at_once() {
    let server = Server::start(&["limits.max_tcp_connections=20"]);
    let tcp = server.tcp;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let mut held = Vec::new();
        for i in 0..20u8 {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10 + i)),
                0,
            ))
            .unwrap();
            held.push(sock.connect(tcp).await.unwrap());
        }
        // Let the server count them all before the next one arrives.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut over = tokio::net::TcpStream::connect(tcp).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), over.read(&mut buf))
            .await
            .expect("the connection past the cap is closed at once")
            .unwrap_or(0);
        assert_eq!(n, 0);
        // The 20 held are still served: an OPTIONS on one of them is answered.
        let s = &mut held[0];
        let local = s.local_addr().unwrap();
        let options = format!(
            "OPTIONS sip:{tcp} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKcap1\r\n\
             Max-Forwards: 70\r\nFrom: <sip:t@{local}>;tag=1\r\nTo: <sip:{tcp}>\r\n\
             Call-ID: cap-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        s.write_all(options.as_bytes()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("answer on a held connection")
            .unwrap();
        assert!(buf[..n].starts_with(b"SIP/2.0 200"), "{:?}", &buf[..n]);
        // A slot given back is usable again.
        held.truncate(10);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut again = tokio::net::TcpStream::connect(tcp).await.unwrap();
        again.write_all(options.as_bytes()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(3), again.read(&mut buf))
            .await
            .expect("a new connection after slots were freed")
            .unwrap();
        assert!(buf[..n].starts_with(b"SIP/2.0 200"), "{:?}", &buf[..n]);
    });
    assert!(
        server
            .log_text()
            .contains("limits.max_tcp_connections (20) reached"),
        "one warning names the limit"
    );
    server.assert_no_panic();
}
