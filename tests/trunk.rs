//! Provider trunks against a real provider: Kamailio (Debian's package) on loopback is
//! the registrar with digest authentication and the proxy that routes calls for the
//! hotline's user to its registered contact. The hotline registers over UDP or TCP,
//! an independent caller (baresip) calls the number through Kamailio and hears the
//! greeting, `hotline trunks --json` shows the registration; a Kamailio restart is
//! survived, and a wrong password is not hammered.

mod common;

use common::{best_match, read_wav, require_tool, Server};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "secret-pass";

/// A Kamailio instance on 127.0.0.1:`port` (UDP and TCP), logging what it sees.
struct Kamailio {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    log: PathBuf,
}

fn kamailio_config(port: u16, password: &str, algorithm: &str) -> String {
    format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
children=1
tcp_children=1
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}
auto_aliases=no
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
modparam("usrloc", "db_mode", 0)
modparam("registrar", "min_expires", 10)
modparam("auth", "algorithm", "{algorithm}")
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    force_rport();
    if (is_method("REGISTER")) {{
        xlog("L_NOTICE", "REGISTER-SEEN at=$TV(Sn) proto=$pr expires=$hdr(Expires) auth=$hdr(Authorization)\n");
        if (!pv_www_authenticate("$td", "{password}", "0")) {{
            www_challenge("$td", "1");
            exit;
        }}
        consume_credentials();
        if (!save("location")) {{ sl_reply_error(); }}
        xlog("L_NOTICE", "REGISTER-SAVED proto=$pr contact=$ct\n");
        exit;
    }}
    if (is_method("OPTIONS") && $rU == $null) {{ sl_send_reply("200", "OK"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    record_route();
    if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
    xlog("L_NOTICE", "INVITE-ROUTED to=$ru\n");
    t_relay();
}}
"#
    )
}

/// Whether a SIP server on 127.0.0.1:`port` answers an OPTIONS over TCP within 1 s.
fn answers_options_over_tcp(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let local = stream.local_addr().expect("local address");
    let options = format!(
        "OPTIONS sip:127.0.0.1:{port};transport=tcp SIP/2.0\r\n\
         Via: SIP/2.0/TCP {local};branch=z9hG4bK-ready-{}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@127.0.0.1>;tag=ready\r\n\
         To: <sip:127.0.0.1:{port}>\r\n\
         Call-ID: ready-{}@127.0.0.1\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        local.port(),
        local.port()
    );
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(options.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"SIP/2.0 "))
}

impl Kamailio {
    fn start(port: u16, password: &str, algorithm: &str) -> Kamailio {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("kamailio.log");
        let mut k = Kamailio {
            child: None,
            dir,
            port,
            log,
        };
        std::fs::write(
            k.dir.path().join("kamailio.cfg"),
            kamailio_config(port, password, algorithm),
        )
        .expect("config");
        k.launch();
        k
    }

    fn launch(&mut self) {
        let run = self.dir.path().join("run");
        std::fs::create_dir_all(&run).expect("run dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        use std::os::unix::process::CommandExt;
        let child = Command::new("kamailio")
            .process_group(0)
            .arg("-f")
            .arg(self.dir.path().join("kamailio.cfg"))
            .args(["-DD", "-E", "-m", "32", "-M", "4", "-Y"])
            .arg(&run)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kamailio");
        self.child = Some(child);
        // Ready once it answers over TCP: an accepted connection alone can come before
        // the TCP workers read, and a REGISTER sent then waits for Timer F.
        let until = Instant::now() + Duration::from_secs(20);
        while !answers_options_over_tcp(self.port) {
            assert!(
                Instant::now() < until,
                "kamailio did not start:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills Kamailio and its worker processes (its own process group), as a crash
    /// would: the kernel closes every connection.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(-(c.id() as i32), libc::SIGKILL);
            }
            let _ = c.wait();
            let until = Instant::now() + Duration::from_secs(5);
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && Instant::now() < until
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Times (s since the epoch) and the Authorization header of each REGISTER seen.
    fn registers(&self) -> Vec<(f64, bool)> {
        self.log_text()
            .lines()
            .filter_map(|l| {
                let rest = l.split("REGISTER-SEEN at=").nth(1)?;
                let at: f64 = rest.split_whitespace().next()?.parse().ok()?;
                Some((at, !rest.contains("auth=<null>")))
            })
            .collect()
    }

    fn saved(&self) -> usize {
        self.log_text().matches("REGISTER-SAVED").count()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.stop();
    }
}

fn trunk_setting(port: u16, transport: &str, password: &str, expires: u32) -> String {
    format!(
        r#"trunks=[{{name="provider",registrar="sip:127.0.0.1:{port}{transport}",username="hotline",password="{password}",expires_s={expires},accept_from=["127.0.0.0/8"]}}]"#
    )
}

fn trunks_json(server: &Server) -> serde_json::Value {
    let out = server.cli(&["trunks", "--json"]);
    assert!(
        out.status.success(),
        "hotline trunks failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("trunks json");
    list[0].clone()
}

fn wait_state(
    server: &Server,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
) -> serde_json::Value {
    let until = Instant::now() + timeout;
    loop {
        let t = trunks_json(server);
        if pred(t["state"].as_str().unwrap_or_default()) {
            return t;
        }
        assert!(
            Instant::now() < until,
            "trunk state stayed {t}; log:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn prompt(id: &str) -> Vec<i16> {
    read_wav(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("prompts/ru")
            .join(format!("{id}.wav")),
    )
}

/// baresip calls `uri` for `seconds` and returns what it heard.
fn baresip_call(uri: &str, seconds: u32) -> (Vec<i16>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ctrl_port = common::free_udp_port();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(d.join("src.wav"), spec).expect("src.wav");
    for i in 0..8000 * 30 {
        w.write_sample(((i % 50) as i16 - 25) * 4).expect("write");
    }
    w.finalize().expect("finalize");
    common::baresip_config(d, ctrl_port, true);
    let mut args = vec![
        "-f".to_string(),
        d.display().to_string(),
        "-e".into(),
        format!("/dial {uri}"),
        "-t".into(),
        seconds.to_string(),
    ];
    args.extend(
        common::baresip_interface_args()
            .iter()
            .map(|s| s.to_string()),
    );
    let status = Command::new("baresip")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(d.join("baresip.log")).expect("log"))
        .stderr(Stdio::null())
        .status()
        .expect("baresip");
    let log = std::fs::read_to_string(d.join("baresip.log")).unwrap_or_default();
    assert!(
        status.success() || log.contains("Call established"),
        "baresip:\n{log}"
    );
    let dump = std::fs::read_dir(d.join("snd"))
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"));
    let heard = dump.map(|p| read_wav(&p)).unwrap_or_default();
    (heard, log)
}

/// A caller through Kamailio is answered and hears the greeting.
fn call_through(k: &Kamailio) {
    let routed_before = k.log_text().matches("INVITE-ROUTED").count();
    let (heard, log) = baresip_call(&format!("sip:hotline@127.0.0.1:{}", k.port), 6);
    assert!(log.contains("Call established"), "baresip log:\n{log}");
    assert!(
        k.log_text().matches("INVITE-ROUTED").count() > routed_before,
        "the call went through Kamailio"
    );
    let greeting = prompt("greeting");
    let (corr, _) = best_match(&greeting[..8000], &heard, 0..16_000);
    assert!(
        corr > 0.9,
        "greeting heard through the trunk (corr {corr:.3})"
    );
}

fn tools() -> bool {
    require_tool("kamailio") && require_tool("baresip")
}

#[test]
fn registers_over_udp_and_calls_through_kamailio_are_answered() {
    if !tools() {
        return;
    }
    let port = common::free_udp_port();
    let mut k = Kamailio::start(port, PASSWORD, "MD5");
    let server = Server::start(&[&trunk_setting(port, "", PASSWORD, 60)]);
    let t = wait_state(&server, Duration::from_secs(10), |s| s == "registered");
    assert_eq!(t["registrar"], format!("udp:127.0.0.1:{port}"));
    assert!(
        t["expires_in_s"]
            .as_u64()
            .is_some_and(|e| e > 50 && e <= 60),
        "{t}"
    );
    assert!(
        k.log_text().contains("REGISTER-SAVED proto=udp"),
        "{}",
        k.log_text()
    );
    call_through(&k);

    // Kamailio keeps registrations in memory: after a restart the hotline is found
    // again once its next refresh arrives (at most 30 s later with a 60 s lifetime).
    k.stop();
    let restarted = Instant::now();
    k.launch();
    let saved_before = k.saved();
    let until = restarted + Duration::from_secs(40);
    while k.saved() == saved_before {
        assert!(
            Instant::now() < until,
            "no refresh reached the restarted Kamailio:\n{}",
            k.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    call_through(&k);
    assert_eq!(trunks_json(&server)["state"], "registered");
    server.assert_no_panic();
}

#[test]
fn registers_over_tcp_with_sha256_and_again_after_kamailio_restarts() {
    if !tools() {
        return;
    }
    let port = common::free_udp_port();
    let mut k = Kamailio::start(port, PASSWORD, "SHA-256");
    let mut server = Server::start(&[&trunk_setting(port, ";transport=tcp", PASSWORD, 600)]);
    let t = wait_state(&server, Duration::from_secs(10), |s| s == "registered");
    assert_eq!(t["registrar"], format!("tcp:127.0.0.1:{port}"));
    assert!(
        k.log_text().contains("REGISTER-SAVED proto=tcp"),
        "{}",
        k.log_text()
    );
    assert!(
        k.log_text().contains("algorithm=SHA-256"),
        "{}",
        k.log_text()
    );
    call_through(&k);

    // The lost connection is the signal: registered again well within 35 s, and the
    // next call gets through.
    k.stop();
    std::thread::sleep(Duration::from_millis(500));
    let restarted = Instant::now();
    k.launch();
    let saved_before = k.saved();
    let until = restarted + Duration::from_secs(35);
    while k.saved() == saved_before {
        assert!(
            Instant::now() < until,
            "not registered again within 35 s:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "registered again {:.1} s after the restart",
        restarted.elapsed().as_secs_f64()
    );
    wait_state(&server, Duration::from_secs(5), |s| s == "registered");
    call_through(&k);

    // A clean stop unregisters (Expires: 0 reaches Kamailio).
    server.stop();
    let expires: Vec<String> = k
        .log_text()
        .lines()
        .filter(|l| l.contains("REGISTER-SEEN"))
        .map(|l| l.to_string())
        .collect();
    assert!(
        expires.last().is_some_and(|l| l.contains("expires=0")),
        "last REGISTER unregisters: {expires:#?}"
    );
}

/// A wrong password: the state says so, and for three minutes Kamailio sees at most
/// one password guess per 30 s (each attempt: one REGISTER without credentials, one
/// with).
#[test]
fn a_wrong_password_says_so_and_is_not_hammered() {
    if !tools() {
        return;
    }
    let port = common::free_udp_port();
    let k = Kamailio::start(port, PASSWORD, "MD5");
    let server = Server::start(&[&trunk_setting(port, "", "not-the-password", 600)]);
    let t = wait_state(&server, Duration::from_secs(10), |s| {
        s.starts_with("failed:")
    });
    assert_eq!(t["state"], "failed: 401 Unauthorized (credentials refused)");
    assert!(t["retry_in_s"].as_u64().is_some_and(|s| s >= 25), "{t}");
    let text = String::from_utf8_lossy(&server.cli(&["trunks"]).stdout).to_string();
    assert!(text.contains("failed: 401 Unauthorized"), "{text}");
    std::thread::sleep(Duration::from_secs(180));
    let seen = k.registers();
    let guesses: Vec<f64> = seen
        .iter()
        .filter(|(_, auth)| *auth)
        .map(|(t, _)| *t)
        .collect();
    assert!(guesses.len() >= 3, "kept trying: {seen:?}");
    for pair in guesses.windows(2) {
        assert!(
            pair[1] - pair[0] >= 29.9,
            "guesses {:.1} s apart: {seen:?}",
            pair[1] - pair[0]
        );
    }
    assert!(seen.len() <= 2 * guesses.len(), "{seen:?}");
    server.assert_no_panic();
}

/// dnsmasq on loopback serving the provider's records.
struct Dnsmasq {
    child: Child,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Dnsmasq {
    fn start(records: &[String]) -> Dnsmasq {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = common::free_udp_port();
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--no-daemon",
                "--user=root",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--log-queries",
                "--log-facility=-",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .args(records)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("dnsmasq.log")).expect("log"))
            .spawn()
            .expect("start dnsmasq");
        std::thread::sleep(Duration::from_millis(300));
        Dnsmasq {
            child,
            _dir: dir,
            port,
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The registrar is named by host name: NAPTR points to the UDP SRV name, whose two
/// targets (priorities 10 and 20) are two Kamailios. The first is found first; when
/// it stops answering, the next keep-alive times out and the hotline registers with
/// the second.
#[test]
fn a_registrar_found_through_srv_fails_over_to_the_second_target() {
    if !(tools() && require_tool("dnsmasq")) {
        return;
    }
    let (p1, p2) = (common::free_udp_port(), common::free_udp_port());
    let mut first = Kamailio::start(p1, PASSWORD, "MD5");
    let second = Kamailio::start(p2, PASSWORD, "MD5");
    let dns = Dnsmasq::start(&[
        "--naptr-record=provider.test,10,10,S,SIP+D2U,,_sip._udp.provider.test".into(),
        format!("--srv-host=_sip._udp.provider.test,k1.provider.test,{p1},10,10"),
        format!("--srv-host=_sip._udp.provider.test,k2.provider.test,{p2},20,10"),
        "--host-record=k1.provider.test,127.0.0.1".into(),
        "--host-record=k2.provider.test,127.0.0.1".into(),
    ]);
    let server = Server::start(&[
        r#"trunks=[{name="provider",registrar="sip:provider.test",username="hotline",password="secret-pass",expires_s=600}]"#,
        &format!(r#"sip.dns_servers=["127.0.0.1:{}"]"#, dns.port),
        // Timer F of 6.4 s instead of 32 s: the failover comes sooner, not otherwise.
        "sip.t1_ms=100",
    ]);
    let t = wait_state(&server, Duration::from_secs(10), |s| s == "registered");
    assert_eq!(t["registrar"], format!("udp:127.0.0.1:{p1}"), "{t}");
    assert_eq!(second.saved(), 0);
    first.stop();
    let stopped = Instant::now();
    let until = stopped + Duration::from_secs(45);
    while second.saved() == 0 {
        assert!(
            Instant::now() < until,
            "never registered with the second target:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "registered with the second SRV target {:.1} s after the first stopped",
        stopped.elapsed().as_secs_f64()
    );
    let t = wait_state(&server, Duration::from_secs(5), |s| s == "registered");
    assert_eq!(t["registrar"], format!("udp:127.0.0.1:{p2}"), "{t}");
    call_through(&second);
    server.assert_no_panic();
}
