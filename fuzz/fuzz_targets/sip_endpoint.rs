//! The whole SIP endpoint fed a conversation: transactions, dialogs, calls, the
//! registrar and digest, timers, over UDP datagrams and TCP streams from four sources.
//!
//! Input: records separated by `SEPARATOR`; a record's first byte steers it (bits 0-1
//! the source, bit 2 TCP instead of UDP, bits 3-7 how far simulated time moves on
//! first, in 250 ms steps), the rest is the datagram or the next bytes of the stream.
//! Media allocations are answered at once, with a port or (for every fourth call) a
//! failure, as the media engine would. `$TAG` in a record becomes the To tag of the
//! last response the endpoint sent, so seeds can ACK, re-INVITE and BYE in a dialog.
#![no_main]

use hotline::call::{Link, MediaCommand, WallClock};
use hotline::sip::digest::{DigestConfig, Ha1Set};
use hotline::sip::operators::RegistrarSetup;
use hotline::sip::raw::{StreamFramer, StreamItem};
use hotline::sip::registrar::RegistrarConfig;
use hotline::sip::{Endpoint, EndpointConfig, Output};
use libfuzzer_sys::fuzz_target;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

const SEPARATOR: &[u8] = b"\n\x00\xffNEXT\n";
const MAX_MESSAGE: usize = 4096;

fn split<'a>(mut data: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        let end = data
            .windows(SEPARATOR.len())
            .position(|w| w == SEPARATOR)
            .unwrap_or(data.len());
        let record = &data[..end];
        data = &data[(end + SEPARATOR.len()).min(data.len())..];
        Some(record)
    })
}

/// The tag of the To header of a response we sent.
fn to_tag(data: &[u8]) -> Option<Vec<u8>> {
    if !data.starts_with(b"SIP/2.0 ") {
        return None;
    }
    let line_start = data.windows(5).position(|w| w == b"\nTo: ")? + 5;
    let line = &data[line_start..];
    let line = &line[..line.iter().position(|&b| b == b'\r').unwrap_or(line.len())];
    let tag_start = line.windows(5).position(|w| w == b";tag=")? + 5;
    let tag = &line[tag_start..];
    let end = tag.iter().position(|&b| b == b';').unwrap_or(tag.len());
    Some(tag[..end].to_vec())
}

fn substitute_tag(record: &[u8], tag: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.len() + tag.len());
    let mut rest = record;
    while let Some(at) = rest.windows(4).position(|w| w == b"$TAG") {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(tag);
        rest = &rest[at + 4..];
    }
    out.extend_from_slice(rest);
    out
}

fn drain(ep: &mut Endpoint, now: Instant, allocations: &mut u32, tag: &mut Vec<u8>) {
    while let Some(out) = ep.poll_output() {
        if let Output::Transmit { data, .. } = &out {
            if let Some(t) = to_tag(data) {
                *tag = t;
            }
        }
        if let Output::Media(MediaCommand::Allocate { call, .. }) = out {
            *allocations += 1;
            if *allocations % 4 == 0 {
                ep.media_failed(now, call);
            } else {
                ep.media_allocated(now, call, 20000 + (*allocations % 1000) as u16 * 2);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut now = start;
    let mut ep = Endpoint::new(
        EndpointConfig {
            max_calls: 4,
            max_message_bytes: MAX_MESSAGE,
            registrar: Some(RegistrarSetup {
                registrar: RegistrarConfig::default(),
                digest: DigestConfig::new("hotline"),
                feature_codes: vec![("*1".into(), "Available".into())],
            }),
            ..EndpointConfig::default()
        },
        StdRng::seed_from_u64(11),
        now,
        WallClock::anchor(now, SystemTime::UNIX_EPOCH),
    );
    ep.set_operator_credentials(
        [(
            "anna".to_string(),
            Ha1Set::from_password("anna", "hotline", "secret-pass"),
        )]
        .into(),
    );
    let local: SocketAddr = "127.0.0.1:5060".parse().unwrap();
    let sources: [SocketAddr; 4] = [
        "127.0.0.1:5062".parse().unwrap(),
        "127.0.0.2:5060".parse().unwrap(),
        "127.0.0.3:5070".parse().unwrap(),
        "[::1]:5080".parse().unwrap(),
    ];
    let mut framers: [StreamFramer; 4] = std::array::from_fn(|_| StreamFramer::new(MAX_MESSAGE));
    let mut closed = [false; 4];
    let mut allocations = 0u32;
    let mut tag = Vec::new();

    for record in split(data) {
        let record = substitute_tag(record, &tag);
        let Some((&control, bytes)) = record.split_first() else {
            continue;
        };
        now += Duration::from_millis(250 * u64::from(control >> 3));
        while let Some(t) = ep.poll_timeout().filter(|&t| t <= now) {
            ep.handle_timeout(t.max(start));
            drain(&mut ep, now, &mut allocations, &mut tag);
        }
        let source = usize::from(control & 3);
        let from = sources[source];
        if control & 4 == 0 {
            ep.handle_datagram(now, Link::Udp(0), local, from, bytes);
        } else if !closed[source] {
            let peer = hotline::call::Peer {
                link: Link::Tcp(source as u64),
                remote: from,
                local,
            };
            framers[source].push(bytes);
            while let Some(item) = framers[source].next_item() {
                match item {
                    StreamItem::Message(raw) => ep.handle_stream_message(now, peer, raw),
                    StreamItem::Fatal(e, partial) => {
                        ep.handle_stream_error(peer, e, partial);
                        closed[source] = true;
                        break;
                    }
                }
            }
        }
        drain(&mut ep, now, &mut allocations, &mut tag);
    }
    // Let every timer run out: calls end, transactions terminate.
    ep.hangup_all(now);
    drain(&mut ep, now, &mut allocations, &mut tag);
    for _ in 0..64 {
        let Some(t) = ep.poll_timeout() else { break };
        now = now.max(t);
        ep.handle_timeout(now);
        drain(&mut ep, now, &mut allocations, &mut tag);
    }
});
