//! The media engine bridges two call legs: each party hears the other in its own codec
//! (PCMU on one leg, PCMA on the other), packets stay a continuous RTP stream, digits
//! cross over in the form the other leg understands, and the conversation is recorded
//! in stereo with the caller on the left and the operator on the right.
//!
//! The test plays both phones itself on 127.0.0.1 UDP sockets and drives the engine
//! directly, without SIP.

use hotline::call::{CallId, Channels, Codec, DigitSource, MediaCommand, MediaEvent};
use hotline::config::PortRange;
use hotline::media::engine::{self, EngineCommand, InbandPolicy, MediaConfig};
use hotline::media::g711;
use hotline::media::rtp::{RtpSender, MAX_PACKET};
use hotline::media::session::{DtmfMode, MediaSession, SessionEvent};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const CALLER: CallId = 1;
const OPERATOR: CallId = 2;

fn engine(ports: PortRange) -> (engine::MediaHandle, mpsc::UnboundedReceiver<MediaEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let cfg = MediaConfig {
        ports,
        rtp_timeout: Duration::ZERO,
        inband: InbandPolicy::Auto,
        latch: false,
    };
    (engine::spawn(cfg, tx).expect("media threads start"), rx)
}

async fn event(
    rx: &mut mpsc::UnboundedReceiver<MediaEvent>,
    what: &str,
    mut want: impl FnMut(&MediaEvent) -> bool,
) -> MediaEvent {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) if want(&ev) => return ev,
            Ok(Some(_)) => {}
            Ok(None) => panic!("engine gone while waiting for {what}"),
            Err(_) => panic!("no {what} within 10 s"),
        }
    }
}

/// Everything the engine sent is kept; `events` holds what it said meanwhile.
struct Phone {
    socket: Arc<UdpSocket>,
    /// The engine's port for this leg.
    leg: SocketAddr,
    received: JoinHandle<Vec<(Instant, Vec<u8>)>>,
}

/// Allocates and starts a leg whose peer is a test socket.
async fn phone(
    media: &engine::MediaHandle,
    events: &mut mpsc::UnboundedReceiver<MediaEvent>,
    call: CallId,
    codec: Codec,
    telephone_event_pt: Option<u8>,
    stop: watch::Receiver<bool>,
) -> Phone {
    let socket = Arc::new(UdpSocket::bind((LOCALHOST, 0)).await.unwrap());
    media.send(EngineCommand::Sip(MediaCommand::Allocate {
        call,
        local_ip: LOCALHOST,
    }));
    let port = match event(
        events,
        "Allocated",
        |e| matches!(e, MediaEvent::Allocated { call: c, .. } if *c == call),
    )
    .await
    {
        MediaEvent::Allocated { port, .. } => port,
        _ => unreachable!(),
    };
    media.send(EngineCommand::Sip(MediaCommand::Start {
        call,
        remote: Some(socket.local_addr().unwrap()),
        signal_ip: LOCALHOST,
        codec,
        telephone_event_pt,
        send: true,
        confirmed: true,
        srtp: None,
    }));
    let s = socket.clone();
    let received = tokio::spawn(async move {
        let mut stop = stop;
        let mut got = Vec::new();
        let mut buf = [0u8; 1500];
        loop {
            tokio::select! {
                r = s.recv_from(&mut buf) => {
                    let (n, _) = r.unwrap();
                    got.push((Instant::now(), buf[..n].to_vec()));
                }
                _ = stop.changed() => break,
            }
        }
        got
    });
    Phone {
        socket,
        leg: SocketAddr::new(LOCALHOST, port),
        received,
    }
}

fn sine(freq: f64, start: usize, n: usize) -> Vec<i16> {
    (start..start + n)
        .map(|i| (8000.0 * (std::f64::consts::TAU * freq * i as f64 / 8000.0).sin()) as i16)
        .collect()
}

/// Share of the energy of `x` at `freq` (1.0 for a pure tone at that frequency).
fn tone_share(x: &[i16], freq: f64) -> f64 {
    let w = std::f64::consts::TAU * freq / 8000.0;
    let (mut re, mut im, mut energy) = (0.0, 0.0, 0.0);
    for (i, &s) in x.iter().enumerate() {
        let s = f64::from(s);
        re += s * (w * i as f64).cos();
        im += s * (w * i as f64).sin();
        energy += s * s;
    }
    if energy == 0.0 {
        return 0.0;
    }
    2.0 * (re * re + im * im) / (x.len() as f64 * energy)
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

struct Stream {
    /// Packets of the leg's codec, in arrival order.
    audio: Vec<(Instant, Vec<u8>)>,
    /// Per audio packet: decoded samples.
    pcm: Vec<Vec<i16>>,
}

/// Checks the stream is one continuous RTP stream in `codec` and decodes it.
fn check_stream(name: &str, packets: &[(Instant, Vec<u8>)], codec: Codec) -> Stream {
    assert!(
        packets.len() > 100,
        "{name}: only {} packets",
        packets.len()
    );
    let mut ssrc = None;
    let mut prev: Option<(u16, u32)> = None;
    let mut audio = Vec::new();
    let mut pcm = Vec::new();
    let mut markers = 0;
    for (at, p) in packets {
        let r = rtp_rs::RtpReader::new(p).expect("RTP");
        assert_eq!(r.payload_type(), codec.payload_type(), "{name}: codec");
        assert_eq!(*ssrc.get_or_insert(r.ssrc()), r.ssrc(), "{name}: one SSRC");
        let seq = u16::from(r.sequence_number());
        if let Some((s, ts)) = prev {
            assert_eq!(seq, s.wrapping_add(1), "{name}: sequence continuous");
            assert_eq!(
                r.timestamp(),
                ts.wrapping_add(160),
                "{name}: timestamps continuous"
            );
        }
        prev = Some((seq, r.timestamp()));
        markers += usize::from(r.mark());
        assert_eq!(r.payload().len(), 160);
        let mut s = Vec::new();
        g711::decode_into(codec, r.payload(), &mut s);
        pcm.push(s);
        audio.push((*at, p.clone()));
    }
    // The stream's first packet, and the first after the bridge started.
    assert_eq!(markers, 2, "{name}: marker bits");
    Stream { audio, pcm }
}

fn audible(frame: &[i16]) -> bool {
    rms(frame) > 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridged_legs_hear_each_other_across_codecs_and_are_recorded_in_stereo() {
    let (media, mut events) = engine(PortRange {
        first: 41000,
        last: 41499,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // The caller's phone speaks PCMU with telephone-event, the operator's PCMA without.
    let a = phone(
        &media,
        &mut events,
        CALLER,
        Codec::Pcmu,
        Some(101),
        stop_rx.clone(),
    )
    .await;
    let b = phone(&media, &mut events, OPERATOR, Codec::Pcma, None, stop_rx).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rec/2026/conv.wav");
    media.send(EngineCommand::Bridge {
        caller: CALLER,
        operator: OPERATOR,
        record: Some(path.clone()),
    });
    let bridged_at = Instant::now();

    // 2 s of a 440 Hz tone from the caller, 1000 Hz from the operator, paced at 20 ms.
    let mut tx_a = RtpSender::new(0xA, 1000, 5000);
    let mut tx_b = RtpSender::new(0xB, 60000, 9);
    let mut clock = tokio::time::interval(Duration::from_millis(20));
    let mut buf = [0u8; MAX_PACKET];
    let mut enc = Vec::new();
    let mut first_sent = None;
    for i in 0..100 {
        clock.tick().await;
        g711::encode(Codec::Pcmu, &sine(440.0, i * 160, 160), &mut enc);
        let n = tx_a.build(0, &enc, &mut buf);
        a.socket.send_to(&buf[..n], a.leg).await.unwrap();
        g711::encode(Codec::Pcma, &sine(1000.0, i * 160, 160), &mut enc);
        let n = tx_b.build(8, &enc, &mut buf);
        b.socket.send_to(&buf[..n], b.leg).await.unwrap();
        first_sent.get_or_insert_with(Instant::now);
    }
    let first_sent = first_sent.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    media.send(EngineCommand::Unbridge { call: OPERATOR });
    let unbridged_at = Instant::now();

    let info = match event(&mut events, "ConversationRecorded", |e| {
        matches!(
            e,
            MediaEvent::ConversationRecorded { .. } | MediaEvent::BridgeEnded { .. }
        )
    })
    .await
    {
        MediaEvent::ConversationRecorded {
            caller,
            operator,
            result,
        } => {
            assert_eq!((caller, operator), (CALLER, OPERATOR));
            result.expect("recording")
        }
        other => panic!("BridgeEnded before the recording: {other:?}"),
    };
    let ended = event(&mut events, "BridgeEnded", |e| {
        matches!(e, MediaEvent::BridgeEnded { .. })
    })
    .await;
    assert!(matches!(
        ended,
        MediaEvent::BridgeEnded {
            caller: CALLER,
            operator: OPERATOR
        }
    ));
    // Silence again after the bridge, then stop listening.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_tx.send(true).unwrap();
    let got_a = a.received.await.unwrap();
    let got_b = b.received.await.unwrap();

    // Each phone got one continuous stream in its own codec.
    let sa = check_stream("caller", &got_a, Codec::Pcmu);
    let sb = check_stream("operator", &got_b, Codec::Pcma);

    // The operator heard the caller's 440 Hz, the caller the operator's 1000 Hz.
    for (name, s, heard, own) in [
        ("operator", &sb, 440.0, 1000.0),
        ("caller", &sa, 1000.0, 440.0),
    ] {
        let loud: Vec<usize> = (0..s.pcm.len()).filter(|&i| audible(&s.pcm[i])).collect();
        assert!(
            loud.len() >= 90,
            "{name} heard {} frames of 100",
            loud.len()
        );
        let (first, last) = (loud[0], *loud.last().unwrap());
        let gaps = (last - first + 1) - loud.len();
        assert!(gaps <= 5, "{name}: {gaps} silent frames within the speech");
        assert!(s.audio[first].0 >= bridged_at);
        assert!(s.audio[last].0 <= unbridged_at);
        let speech: Vec<i16> = s.pcm[first..=last].concat();
        let share = tone_share(&speech, heard);
        assert!(share > 0.8, "{name}: {heard} Hz share {share:.3}");
        let leak = tone_share(&speech, own);
        assert!(leak < 0.01, "{name}: own {own} Hz share {leak:.3}");
        // Nothing audible after the bridge ended.
        assert!(s.audio[last + 1..]
            .iter()
            .zip(&s.pcm[last + 1..])
            .all(|((at, _), pcm)| *at < unbridged_at || !audible(pcm)));
        let latency = s.audio[first].0 - first_sent;
        eprintln!(
            "{name}: first relayed audio {} ms after the first packet was sent; \
             {gaps} silent frames within the speech",
            latency.as_millis()
        );
        assert!(latency < Duration::from_millis(200), "{name}: {latency:?}");
    }

    // The recording: stereo, caller left, operator right, aligned.
    assert_eq!(info.path, path);
    assert_eq!(info.channels, Channels::Stereo);
    let elapsed = (unbridged_at - bridged_at).as_millis() as u64;
    assert!(
        info.duration_ms + 100 >= elapsed && info.duration_ms <= elapsed + 100,
        "{} ms recorded over {elapsed} ms",
        info.duration_ms
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir.path().join("rec")), 0o700);
    assert_eq!(mode(&dir.path().join("rec/2026")), 0o700);
    let mut reader = hound::WavReader::open(&path).unwrap();
    let spec = reader.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (2, 8000, 16)
    );
    let samples: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
    assert_eq!(samples.len() as u64, 2 * info.samples);
    let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
    let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
    let frames = |x: &[i16]| -> Vec<usize> {
        x.chunks(160)
            .enumerate()
            .filter(|(_, f)| audible(f))
            .map(|(i, _)| i)
            .collect()
    };
    let (fl, fr) = (frames(&left), frames(&right));
    assert!(
        fl.len() >= 90 && fr.len() >= 90,
        "{} / {}",
        fl.len(),
        fr.len()
    );
    // Both phones started talking on the same tick: the channels start together.
    assert!(
        fl[0].abs_diff(fr[0]) <= 2,
        "left from {}, right from {}",
        fl[0],
        fr[0]
    );
    let l = &left[fl[0] * 160..(fl.last().unwrap() + 1) * 160];
    let r = &right[fr[0] * 160..(fr.last().unwrap() + 1) * 160];
    assert!(tone_share(l, 440.0) > 0.8, "left {}", tone_share(l, 440.0));
    assert!(
        tone_share(r, 1000.0) > 0.8,
        "right {}",
        tone_share(r, 1000.0)
    );
    assert!(tone_share(l, 1000.0) < 0.01 && tone_share(r, 440.0) < 0.01);
}

/// A phone built from the crate's own media session: it sends what its session
/// produces every 20 ms and feeds what it receives back into it.
async fn run_phone(
    phone: Phone,
    mut session: MediaSession,
    mut digits: mpsc::UnboundedReceiver<(char, DtmfMode)>,
    mut stop: watch::Receiver<bool>,
) -> Vec<(char, DigitSource)> {
    let Phone {
        socket,
        leg,
        received,
    } = phone;
    received.abort();
    let start = Instant::now();
    let mut heard = Vec::new();
    let mut clock = tokio::time::interval(Duration::from_millis(20));
    let mut out = [0u8; MAX_PACKET];
    let mut buf = [0u8; 1500];
    loop {
        tokio::select! {
            _ = clock.tick() => {
                while let Ok((d, mode)) = digits.try_recv() {
                    session.send_digit(d, 100, mode);
                }
                let n = session.on_tick(&mut out);
                socket.send_to(&out[..n], leg).await.unwrap();
            }
            r = socket.recv_from(&mut buf) => {
                let (n, _) = r.unwrap();
                session.on_rtp(&buf[..n], start.elapsed().as_millis() as u64);
            }
            _ = stop.changed() => break,
        }
        while let Some(e) = session.poll_event() {
            if let SessionEvent::Digit(d) = e {
                heard.push((d.digit, d.source));
            }
        }
    }
    heard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_cross_the_bridge_once_in_the_form_the_other_leg_understands() {
    let (media, mut events) = engine(PortRange {
        first: 41500,
        last: 41999,
    });
    let (stop_tx, stop_rx) = watch::channel(false);

    // Refused at once: no such leg (the recording asked for is reported failed).
    media.send(EngineCommand::Bridge {
        caller: 77,
        operator: 78,
        record: Some(std::env::temp_dir().join("never-written.wav")),
    });
    match event(&mut events, "refusal", |_| true).await {
        MediaEvent::ConversationRecorded {
            caller: 77,
            operator: 78,
            result: Err(_),
        } => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        event(&mut events, "refusal", |_| true).await,
        MediaEvent::BridgeEnded {
            caller: 77,
            operator: 78
        }
    ));

    let a = phone(
        &media,
        &mut events,
        CALLER,
        Codec::Pcmu,
        Some(101),
        stop_rx.clone(),
    )
    .await;
    let b = phone(
        &media,
        &mut events,
        OPERATOR,
        Codec::Pcma,
        None,
        stop_rx.clone(),
    )
    .await;
    media.send(EngineCommand::Bridge {
        caller: CALLER,
        operator: OPERATOR,
        record: None,
    });
    // A leg already bridged cannot be bridged again; the first bridge goes on.
    media.send(EngineCommand::Bridge {
        caller: CALLER,
        operator: 3,
        record: None,
    });
    assert!(matches!(
        event(&mut events, "refusal", |e| matches!(
            e,
            MediaEvent::BridgeEnded { .. }
        ))
        .await,
        MediaEvent::BridgeEnded {
            caller: CALLER,
            operator: 3
        }
    ));

    // The caller's phone sends RFC 4733 and hears only events (no in-band detector);
    // the operator's phone has no telephone-event: it sends tones and detects tones.
    let (dig_a, rx_a) = mpsc::unbounded_channel();
    let (dig_b, rx_b) = mpsc::unbounded_channel();
    let phone_a = tokio::spawn(run_phone(
        a,
        MediaSession::new(Codec::Pcmu, Some(101), false, RtpSender::new(1, 2, 3)),
        rx_a,
        stop_rx.clone(),
    ));
    let phone_b = tokio::spawn(run_phone(
        b,
        MediaSession::new(Codec::Pcma, None, true, RtpSender::new(4, 5, 6)),
        rx_b,
        stop_rx,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    dig_a.send(('5', DtmfMode::Rfc4733)).unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    dig_b.send(('7', DtmfMode::Inband)).unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;

    // Hanging up one leg ends the bridge; nothing was recorded, so no recording event.
    media.send(EngineCommand::Sip(MediaCommand::Stop { call: CALLER }));
    let mut reported = Vec::new();
    loop {
        match event(&mut events, "BridgeEnded", |_| true).await {
            MediaEvent::Digit { call, digit } => reported.push((call, digit.digit, digit.source)),
            MediaEvent::BridgeEnded { caller, operator } => {
                assert_eq!((caller, operator), (CALLER, OPERATOR));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    stop_tx.send(true).unwrap();
    let heard_a = phone_a.await.unwrap();
    let heard_b = phone_b.await.unwrap();

    // Each digit is reported once, for the leg it was pressed on.
    assert_eq!(
        reported,
        [
            (CALLER, '5', DigitSource::Rfc4733),
            (OPERATOR, '7', DigitSource::Inband)
        ]
    );
    // The operator's phone hears the caller's RFC 4733 key as tones, once; the caller's
    // phone gets the operator's tone as an RFC 4733 event, once.
    assert_eq!(heard_b, [('5', DigitSource::Inband)]);
    assert_eq!(heard_a, [('7', DigitSource::Rfc4733)]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(events.try_recv().is_err(), "nothing more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_timeout_ends_the_bridge_and_its_recording_once() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let media = engine::spawn(
        MediaConfig {
            ports: PortRange {
                first: 42000,
                last: 42499,
            },
            rtp_timeout: Duration::from_millis(500),
            inband: InbandPolicy::Auto,
            latch: false,
        },
        tx,
    )
    .expect("media threads start");
    let (stop_tx, stop_rx) = watch::channel(false);
    let _a = phone(
        &media,
        &mut events,
        CALLER,
        Codec::Pcma,
        None,
        stop_rx.clone(),
    )
    .await;
    let _b = phone(
        &media,
        &mut events,
        OPERATOR,
        Codec::Pcmu,
        Some(101),
        stop_rx,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conv.wav");
    media.send(EngineCommand::Bridge {
        caller: CALLER,
        operator: OPERATOR,
        record: Some(path.clone()),
    });
    // Neither phone sends anything: both legs time out, the bridge ends once.
    let mut seen = Vec::new();
    loop {
        let ev = event(&mut events, "BridgeEnded", |_| true).await;
        let done = matches!(ev, MediaEvent::BridgeEnded { .. });
        seen.push(ev);
        if done {
            break;
        }
    }
    let timeouts = seen
        .iter()
        .filter(|e| matches!(e, MediaEvent::RtpTimeout { .. }))
        .count();
    assert!(timeouts >= 1, "{seen:?}");
    let recorded: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            MediaEvent::ConversationRecorded {
                caller: CALLER,
                operator: OPERATOR,
                result,
            } => Some(result.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(recorded.len(), 1, "{seen:?}");
    let info = recorded[0].clone().expect("recorded");
    assert!(info.duration_ms >= 400, "{info:?}");
    let reader = hound::WavReader::open(&path).unwrap();
    assert_eq!(u64::from(reader.duration()), info.samples);
    // The hang-ups that follow find no bridge: nothing more about it.
    media.send(EngineCommand::Sip(MediaCommand::Stop { call: CALLER }));
    media.send(EngineCommand::Sip(MediaCommand::Stop { call: OPERATOR }));
    media.send(EngineCommand::Unbridge { call: CALLER });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    while let Ok(ev) = events.try_recv() {
        assert!(
            matches!(ev, MediaEvent::RtpTimeout { .. }),
            "after the bridge ended: {ev:?}"
        );
    }
    stop_tx.send(true).unwrap();
}
