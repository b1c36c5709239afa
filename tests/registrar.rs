//! The operators' registrar against the real binary on loopback: lockout of a source
//! that keeps guessing passwords (SIPp), SHA-256 digest authentication computed here
//! from RFC 7616 / RFC 8760 (raw UDP), replay refusal, unknown users, unregistering,
//! and the feature codes *1 / *2 with the operator's credentials (SIPp).

mod common;

use common::{recv_response, require_tool, Resp, Server};
use sha2::{Digest as _, Sha256};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const OPERATOR: &str = "Anna";
const USER: &str = "anna";
const PASSWORD: &str = "correct horse";

fn scenario(name: &str) -> String {
    format!("{}/tests/sipp/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// SIPp on free SIP and media ports, giving up after 10 s.
fn sipp_command(args: &[&str]) -> Command {
    let port = common::free_udp_port().to_string();
    let media = common::free_udp_port().to_string();
    let mut cmd = Command::new("sipp");
    cmd.args(args).args(["-p", &port, "-mp", &media]).args([
        "-nostdin",
        "-timeout",
        "10s",
        "-timeout_error",
    ]);
    cmd
}

/// One registration by `tests/sipp/register.xml` from `ip`; the SIP messages SIPp
/// sent and received are returned with its result.
fn sipp_register(server: &Server, ip: &str, password: &str, trace: &Path) -> (bool, String) {
    let uas_port = common::free_udp_port().to_string();
    let out = sipp_command(&[
        "-sf",
        &scenario("register.xml"),
        &server.udp.to_string(),
        "-i",
        ip,
        "-m",
        "1",
        "-s",
        USER,
        "-au",
        USER,
        "-ap",
        password,
        "-key",
        "uas_port",
        &uas_port,
        "-key",
        "expires",
        "300",
        "-trace_msg",
        "-message_file",
        &trace.display().to_string(),
    ])
    .output()
    .expect("run sipp");
    let messages = std::fs::read_to_string(trace).unwrap_or_default();
    (out.status.success(), messages)
}

fn add_operator(server: &Server) {
    assert_eq!(server.add_operator(OPERATOR, PASSWORD), USER);
}

/// The operator's entry in `hotline queue --json`, if it has one.
fn queue_operator(server: &Server) -> Option<serde_json::Value> {
    server.operator_entry(USER)
}

/// Polls the queue until the operator is in `state`; returns its entry.
fn wait_state(server: &Server, state: &str, timeout: Duration) -> serde_json::Value {
    server.wait_operator_state(USER, state, timeout)
}

#[test]
fn five_wrong_passwords_lock_out_the_source_address_only() {
    if !require_tool("sipp") {
        return;
    }
    let started = Instant::now();
    let server = Server::start(&[]);
    add_operator(&server);
    let trace = |n: &str| server.dir.path().join(format!("sipp-{n}.log"));
    for i in 0..5 {
        let (ok, messages) = sipp_register(&server, "127.0.0.1", "wrong", &trace(&i.to_string()));
        assert!(!ok, "attempt {i} with a wrong password registered");
        assert!(
            messages.contains("SIP/2.0 403"),
            "attempt {i} refused with 403:\n{messages}"
        );
    }
    // Locked out: even the right password gets nowhere from this address.
    let (ok, messages) = sipp_register(&server, "127.0.0.1", PASSWORD, &trace("locked"));
    assert!(!ok, "the locked-out address registered");
    assert!(
        !messages.contains("SIP/2.0 200"),
        "no 200 for a locked-out address:\n{messages}"
    );
    assert!(
        !messages.contains("SIP/2.0 401"),
        "a locked-out address is not even challenged:\n{messages}"
    );
    assert!(
        queue_operator(&server).is_none(),
        "the operator never registered"
    );
    // Another address is not affected.
    let (ok, messages) = sipp_register(&server, "127.0.0.2", PASSWORD, &trace("other"));
    assert!(ok, "registration from 127.0.0.2 failed:\n{messages}");
    let op = wait_state(&server, "available", Duration::from_secs(5));
    assert_eq!(op["contacts"], 1, "{op}");
    assert_eq!(op["name"], OPERATOR);
    server.assert_no_panic();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

// ---- SHA-256 digest by hand --------------------------------------------------------

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn md5_hex(s: &str) -> String {
    use md5::Digest as _;
    hex::encode(md5::Md5::digest(s.as_bytes()))
}

/// The parameters of one `WWW-Authenticate: Digest ...` value (quotes removed).
fn challenge_params(value: &str) -> Vec<(String, String)> {
    let rest = value
        .strip_prefix("Digest ")
        .unwrap_or_else(|| panic!("not a digest challenge: {value}"));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if name.is_empty() {
            return params;
        }
        chars.next(); // '='
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => val.extend(chars.next()),
                    c => val.push(c),
                }
            }
        } else {
            val = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        params.push((name.trim().to_ascii_lowercase(), val.trim().to_string()));
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Every value of a header (the helpers in `common` return the first only).
fn header_values(resp: &Resp, name: &str) -> Vec<String> {
    resp.text
        .split("\r\n")
        .take_while(|l| !l.is_empty())
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .collect()
}

/// A challenge as the client keeps it.
struct Challenge {
    realm: String,
    nonce: String,
    opaque: Option<String>,
}

impl Challenge {
    fn from_401(resp: &Resp) -> Challenge {
        assert_eq!(resp.code, 401, "{}", resp.text);
        let values = header_values(resp, "www-authenticate");
        assert_eq!(
            values.len(),
            1,
            "only SHA-256 is configured, so one challenge:\n{}",
            resp.text
        );
        let params = challenge_params(&values[0]);
        assert_eq!(
            param(&params, "algorithm"),
            Some("SHA-256"),
            "{}",
            values[0]
        );
        assert_eq!(param(&params, "qop"), Some("auth"), "{}", values[0]);
        Challenge {
            realm: param(&params, "realm").expect("realm").to_string(),
            nonce: param(&params, "nonce").expect("nonce").to_string(),
            opaque: param(&params, "opaque").map(str::to_string),
        }
    }

    /// RFC 7616 §3.4.1 with qop=auth: response = H(H(A1):nonce:nc:cnonce:qop:H(A2)),
    /// A1 = username:realm:password, A2 = method:uri; H is SHA-256 (RFC 8760) or MD5.
    fn authorization(&self, alg: &str, user: &str, password: &str, uri: &str, nc: u32) -> String {
        let h: fn(&str) -> String = if alg == "MD5" { md5_hex } else { sha256_hex };
        let nc = format!("{nc:08x}");
        let cnonce = "0a4f113b";
        let ha1 = h(&format!("{user}:{}:{password}", self.realm));
        let ha2 = h(&format!("REGISTER:{uri}"));
        let response = h(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", self.nonce));
        let mut value = format!(
            "Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{response}\", algorithm={alg}, qop=auth, nc={nc}, cnonce=\"{cnonce}\"",
            self.realm, self.nonce
        );
        if let Some(opaque) = &self.opaque {
            value.push_str(&format!(", opaque=\"{opaque}\""));
        }
        value
    }
}

/// A phone on a plain UDP socket that registers by hand.
struct Phone {
    sock: UdpSocket,
    server: SocketAddr,
    cseq: u32,
}

impl Phone {
    fn new(server: SocketAddr) -> Phone {
        Phone {
            sock: UdpSocket::bind("127.0.0.1:0").expect("bind"),
            server,
            cseq: 0,
        }
    }

    fn local(&self) -> SocketAddr {
        self.sock.local_addr().expect("local addr")
    }

    fn uri(&self) -> String {
        format!("sip:{}", self.server)
    }

    fn contact(&self, user: &str) -> String {
        format!("sip:{user}@{}", self.local())
    }

    /// Sends a REGISTER for `user` (a fresh transaction) and waits for the answer.
    fn register(
        &mut self,
        user: &str,
        call_id: &str,
        expires: u32,
        auth: Option<&str>,
    ) -> Option<Resp> {
        self.cseq += 1;
        let local = self.local();
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let msg = format!(
            "REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{call_id}x{cseq};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{user}@{srv}>;tag=f{call_id}\r\nTo: <sip:{user}@{srv}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <{contact}>\r\nExpires: {expires}\r\n{auth}Content-Length: 0\r\n\r\n",
            uri = self.uri(),
            srv = self.server.ip(),
            cseq = self.cseq,
            contact = self.contact(user),
        );
        self.sock
            .send_to(msg.as_bytes(), self.server)
            .expect("send");
        recv_response(&self.sock, Some(call_id), Duration::from_secs(3))
    }
}

#[test]
fn sha256_digest_registers_refuses_replays_and_unknown_users_and_unregisters() {
    let server = Server::start(&[r#"operators.digest_algorithms=["SHA-256"]"#]);
    add_operator(&server);
    let mut phone = Phone::new(server.udp);
    let uri = phone.uri();

    let first = phone
        .register(USER, "sha-reg", 300, None)
        .expect("answer to REGISTER");
    let challenge = Challenge::from_401(&first);
    assert_eq!(challenge.realm, "hotline");

    let auth = challenge.authorization("SHA-256", USER, PASSWORD, &uri, 1);
    let ok = phone
        .register(USER, "sha-reg", 300, Some(&auth))
        .expect("answer to the authenticated REGISTER");
    assert_eq!(ok.code, 200, "{}", ok.text);
    let contacts = header_values(&ok, "contact");
    assert_eq!(contacts.len(), 1, "{}", ok.text);
    let expected = format!("<{}>;expires=", phone.contact(USER));
    let expires: u32 = contacts[0]
        .strip_prefix(&expected)
        .unwrap_or_else(|| panic!("contact {} is not {expected}N", contacts[0]))
        .parse()
        .expect("expires number");
    assert!((290..=300).contains(&expires), "expires {expires}");
    let op = wait_state(&server, "available", Duration::from_secs(5));
    assert_eq!(op["contacts"], 1, "{op}");

    // The same Authorization again (same nonce, same nc) in a new transaction.
    let replay = phone
        .register(USER, "sha-reg", 300, Some(&auth))
        .expect("answer to the replay");
    let stale = replay.code == 401
        && header_values(&replay, "www-authenticate")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("stale=true"));
    assert!(
        stale || replay.code == 403,
        "a replayed nonce count is refused (401 stale or 403):\n{}",
        replay.text
    );

    // The right password hashed with MD5, which this server does not offer.
    let md5 = challenge.authorization("MD5", USER, PASSWORD, &uri, 2);
    let refused = phone
        .register(USER, "sha-reg", 300, Some(&md5))
        .expect("answer to MD5 credentials");
    assert!(
        [401, 403].contains(&refused.code),
        "MD5 credentials with only SHA-256 offered:\n{}",
        refused.text
    );

    // An unknown user is challenged like anyone, then refused.
    let mut stranger = Phone::new(server.udp);
    let first = stranger
        .register("nobody", "sha-nobody", 300, None)
        .expect("answer to REGISTER for nobody");
    let nobody = Challenge::from_401(&first);
    let auth = nobody.authorization("SHA-256", "nobody", PASSWORD, &uri, 1);
    let forbidden = stranger
        .register("nobody", "sha-nobody", 300, Some(&auth))
        .expect("answer to nobody's credentials");
    assert_eq!(forbidden.code, 403, "{}", forbidden.text);
    assert!(
        queue_operator(&server).is_some_and(|o| o["contacts"] == 1),
        "the operator's binding is untouched"
    );

    // Expires: 0 with the next nonce count removes the binding.
    let auth = challenge.authorization("SHA-256", USER, PASSWORD, &uri, 3);
    let gone = phone
        .register(USER, "sha-reg", 0, Some(&auth))
        .expect("answer to the unregistration");
    assert_eq!(gone.code, 200, "{}", gone.text);
    assert!(
        header_values(&gone, "contact").is_empty(),
        "no bindings left:\n{}",
        gone.text
    );
    let op = wait_state(&server, "offline", Duration::from_secs(5));
    assert_eq!(op["contacts"], 0, "{op}");
    server.assert_no_panic();
}

// ---- feature codes -----------------------------------------------------------------

/// An INVITE dialling `target` (a feature code) with `from_user` in From, from `sock`.
fn feature_invite(sock: &UdpSocket, server: SocketAddr, target: &str, from_user: &str, id: &str) {
    let local = sock.local_addr().expect("local addr");
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40100 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    let msg = format!(
        "INVITE sip:{target}@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{id};rport\r\nMax-Forwards: 70\r\nFrom: <sip:{from_user}@{ip}>;tag=f{id}\r\nTo: <sip:{target}@{server}>\r\nCall-ID: {id}\r\nCSeq: 1 INVITE\r\nContact: <sip:{from_user}@{local}>\r\nContent-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
        ip = server.ip(),
        len = sdp.len()
    );
    sock.send_to(msg.as_bytes(), server).expect("send");
}

/// The ACK for a non-2xx final response: the INVITE's branch and the response's To.
fn ack_for(sock: &UdpSocket, server: SocketAddr, target: &str, resp: &Resp, id: &str) {
    let local = sock.local_addr().expect("local addr");
    let msg = format!(
        "ACK sip:{target}@{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{id};rport\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        from = resp.header("from").expect("From"),
        to = resp.header("to").expect("To"),
    );
    sock.send_to(msg.as_bytes(), server).expect("send");
}

#[test]
fn feature_codes_with_the_operators_credentials_pause_and_resume_the_operator() {
    if !require_tool("sipp") {
        return;
    }
    let server = Server::start(&[]);
    add_operator(&server);
    let trace = server.dir.path().join("sipp-feature.log");
    let screen = std::fs::File::create(server.dir.path().join("sipp-feature.out")).expect("file");
    // Registers, dials *2, waits 2.5 s, dials *1, all from one socket.
    let mut sipp = sipp_command(&[
        "-sf",
        &scenario("feature-codes.xml"),
        &server.udp.to_string(),
        "-i",
        "127.0.0.1",
        "-m",
        "1",
        "-s",
        USER,
        "-au",
        USER,
        "-ap",
        PASSWORD,
        "-d",
        "2500",
        "-trace_msg",
        "-message_file",
        &trace.display().to_string(),
    ])
    .stdout(Stdio::from(screen))
    .stderr(Stdio::null())
    .spawn()
    .expect("start sipp");
    let paused = wait_state(&server, "paused", Duration::from_secs(8));
    assert_eq!(paused["contacts"], 1, "{paused}");
    wait_state(&server, "available", Duration::from_secs(8));
    let status = sipp.wait().expect("wait for sipp");
    let messages = std::fs::read_to_string(&trace).unwrap_or_default();
    assert!(
        status.success(),
        "sipp feature-code scenario failed:\n{messages}"
    );
    // The ACK matched: no 480 was retransmitted during the pause after *2.
    assert_eq!(
        messages.matches("SIP/2.0 480 Paused").count(),
        1,
        "{messages}"
    );
    assert_eq!(messages.matches("SIP/2.0 480 Available").count(), 1);

    // The control socket sets the state of the running server too.
    let out = server.cli(&["operator", "state", OPERATOR, "paused"]);
    assert!(
        out.status.success(),
        "operator state: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_state(&server, "paused", Duration::from_secs(3));

    // The same feature code from anyone else, even with the operator's user in From
    // (plainly or percent-encoded), only gets a challenge: without the password it
    // changes nothing.
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for (target, id) in [("*1", "fc-stranger-1"), ("%2A1", "fc-stranger-2")] {
        feature_invite(&sock, server.udp, target, USER, id);
        let resp = recv_response(&sock, Some(id), Duration::from_secs(3))
            .unwrap_or_else(|| panic!("no answer to {target} from a stranger"));
        assert_eq!(resp.code, 407, "{}", resp.text);
        assert!(resp.header("proxy-authenticate").is_some(), "{}", resp.text);
        ack_for(&sock, server.udp, target, &resp, id);
        // Timer G would retransmit the 407 after 500 ms had the ACK not matched.
        assert!(
            recv_response(&sock, Some(id), Duration::from_millis(1200)).is_none(),
            "407 retransmitted after the ACK"
        );
    }
    let op = queue_operator(&server).expect("operator in the queue");
    assert_eq!(op["state"], "paused", "{op}");
    let calls = server.calls_json();
    assert!(calls.is_empty(), "feature codes make no calls: {calls:?}");
    server.assert_no_panic();
}

/// A user part with `%` before a multi-byte character, in a feature-code check (every
/// INVITE's Request-URI) and in a REGISTER's To: the server must answer, not die.
#[test]
fn percent_before_a_multibyte_character_does_not_crash_the_server() {
    let server = Server::start(&[]);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    feature_invite(&sock, server.udp, "%\u{20ac}1", USER, "pct-invite");
    let _ = recv_response(&sock, Some("pct-invite"), Duration::from_secs(2));
    let mut phone = Phone::new(server.udp);
    let _ = phone.register("%\u{20ac}", "pct-register", 300, None);
    // Still serving: a plain REGISTER is challenged.
    let resp = phone.register(USER, "pct-after", 300, None);
    assert_eq!(resp.map(|r| r.code), Some(401), "{}", server.log_text());
    server.assert_no_panic();
}
