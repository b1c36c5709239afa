//! An operator's softphone over TLS: baresip registering with a test CA, answering at
//! once and sending a steady tone; and a caller that plays speech and records what it
//! hears.

use super::{bin, free_udp_port, spawn_baresip, write_tone, Server};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tone the operator's phone sends as its voice.
pub const OPERATOR_TONE_HZ: f64 = 1777.0;

/// The speech callers play.
pub fn speech() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/speech_ru_festival.wav")
}

/// baresip registering over TLS with `mediaenc` (None: plain RTP), answering at once
/// and sending a steady tone.
pub struct TlsOperator {
    child: Child,
    /// baresip's configuration; what it heard is under `snd/`.
    pub dir: tempfile::TempDir,
    /// Its ctrl_tcp port, for `baresip_command`.
    pub ctrl: u16,
}

impl TlsOperator {
    pub fn start(
        tls: SocketAddr,
        ca: &Path,
        user: &str,
        password: &str,
        mediaenc: Option<&str>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        write_tone(&p.join("src.wav"), OPERATOR_TONE_HZ, 90.0);
        for f in ["play.wav", "alert.wav"] {
            write_tone(&p.join(f), 440.0, 0.1);
        }
        std::fs::create_dir_all(p.join("snd")).expect("snd");
        let ctrl = free_udp_port();
        let sip = free_udp_port();
        // Its RTP port outside every server's range in the tests: a capture that
        // tells the server's legs by port must not find the peer's port in it too.
        let config = format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{sip}\nsip_cafile {ca}\naudio_player aufile,{d}/play.wav\naudio_source aufile,{d}/src.wav\naudio_alert aufile,{d}/alert.wav\nrtp_ports 40000-40999\nmodule_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\nmodule sndfile.so\nmodule srtp.so\nsnd_path {d}/snd\nmodule_app account.so\nmodule_app menu.so\nmodule_app ctrl_tcp.so\nctrl_tcp_listen 127.0.0.1:{ctrl}\n",
            ca = ca.display(),
            d = p.display()
        );
        std::fs::write(p.join("config"), config).expect("config");
        let enc = mediaenc
            .map(|m| format!(";mediaenc={m}"))
            .unwrap_or_default();
        std::fs::write(
            p.join("accounts"),
            format!(
                "<sip:{user}@{tls};transport=tls>;auth_pass={password};regint=600;answermode=auto{enc}\n"
            ),
        )
        .expect("accounts");
        let child = spawn_baresip(p, &[]);
        TlsOperator { child, dir, ctrl }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("baresip.log")).unwrap_or_default()
    }
}

impl Drop for TlsOperator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A caller playing the speech and recording what it hears to `heard`.
pub fn caller(server: &Server, heard: &Path, hangup_after: u32) -> Child {
    caller_with(server, heard, hangup_after, &[])
}

/// [`caller`] with more options of `hotline call` (e.g. `--dtmf`).
pub fn caller_with(server: &Server, heard: &Path, hangup_after: u32, extra: &[&str]) -> Child {
    Command::new(bin())
        .arg("call")
        .arg(format!("sip:hotline@{}", server.udp))
        .args(["--hangup-after", &hangup_after.to_string()])
        .args(extra)
        .arg("--play")
        .arg(speech())
        .arg("--record")
        .arg(heard)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("hotline call")
}

/// The caller's JSON summary once it has hung up.
pub fn finish(mut child: Child, timeout: Duration) -> Value {
    let until = Instant::now() + timeout;
    while child.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < until, "caller did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("caller output");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("summary: {}", String::from_utf8_lossy(&out.stdout)))
}
