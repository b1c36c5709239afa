//! A small HTTP/1.1 client over plain sockets for the console tests: exact control of
//! what is sent (hostile requests included), one connection per request, chunked
//! bodies decoded, and a logged-in session helper.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The value a `Set-Cookie` header gives `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers_named("set-cookie").into_iter().find_map(|c| {
            let (k, rest) = c.split_once('=')?;
            (k == name).then(|| rest.split(';').next().unwrap_or("").to_string())
        })
    }
}

fn decode_chunked(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        data = &data[line_end + 2..];
        if size == 0 || data.len() < size {
            out.extend_from_slice(&data[..size.min(data.len())]);
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
}

pub fn parse(raw: &[u8]) -> Option<Resp> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let body = &raw[head_end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        decode_chunked(body)
    } else {
        body.to_vec()
    };
    Some(Resp {
        status,
        headers,
        body,
    })
}

/// Sends raw bytes and reads until the server closes (or `timeout`).
pub fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    // The server may answer (and close) before the whole of an oversized body is sent.
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if out.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(out)
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let raw = raw(addr, &bytes, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    parse(&raw).unwrap_or_else(|| {
        panic!(
            "{method} {path}: not an HTTP response: {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

pub fn get(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Resp {
    let c;
    let mut h = vec![];
    if let Some(v) = cookie {
        c = v.to_string();
        h.push(("Cookie", c.as_str()));
    }
    request(addr, "GET", path, &h, b"")
}

/// `application/x-www-form-urlencoded` of the pairs.
pub fn form(pairs: &[(&str, &str)]) -> String {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub fn post_form(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    pairs: &[(&str, &str)],
) -> Resp {
    let body = form(pairs);
    let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
    let c;
    if let Some(v) = cookie {
        c = v.to_string();
        h.push(("Cookie", c.as_str()));
    }
    request(addr, "POST", path, &h, body.as_bytes())
}

/// The value of `<input name="csrf" value="...">` or `<meta name="csrf" content="...">`.
pub fn csrf_in(page: &str) -> Option<String> {
    for marker in ["name=\"csrf\" value=\"", "name=\"csrf\" content=\""] {
        if let Some(i) = page.find(marker) {
            let rest = &page[i + marker.len()..];
            return Some(rest[..rest.find('"')?].to_string());
        }
    }
    None
}

/// The login form's pre-login cookie and token.
pub fn login_form(addr: SocketAddr) -> (String, String) {
    let page = get(addr, "/login?lang=en", None);
    assert_eq!(page.status, 200, "{}", page.text());
    let pre = page.cookie("hl_login").expect("pre-login cookie");
    let token = csrf_in(&page.text()).expect("login token");
    (format!("hl_login={pre}"), token)
}

pub fn try_login(addr: SocketAddr, name: &str, password: &str) -> Resp {
    let (cookie, token) = login_form(addr);
    post_form(
        addr,
        "/login",
        Some(&cookie),
        &[
            ("csrf", &token),
            ("name", name),
            ("password", password),
            ("lang", "en"),
        ],
    )
}

/// A logged-in browser-less user.
#[derive(Debug, Clone)]
pub struct Session {
    pub addr: SocketAddr,
    pub cookie: String,
    pub csrf: String,
}

impl Session {
    pub fn login(addr: SocketAddr, name: &str, password: &str) -> Session {
        let r = try_login(addr, name, password);
        assert_eq!(r.status, 303, "login of {name}: {}", r.text());
        assert_eq!(r.header("location"), Some("/"));
        let token = r.cookie("hl_session").expect("session cookie");
        let cookie = format!("hl_session={token}");
        let board = get(addr, "/", Some(&cookie));
        assert_eq!(board.status, 200, "{}", board.text());
        let csrf = csrf_in(&board.text()).expect("csrf token on the board");
        Session { addr, cookie, csrf }
    }

    pub fn get(&self, path: &str) -> Resp {
        get(self.addr, path, Some(&self.cookie))
    }

    pub fn post(&self, path: &str, pairs: &[(&str, &str)]) -> Resp {
        let mut all: Vec<(&str, &str)> = vec![("csrf", self.csrf.as_str())];
        all.extend_from_slice(pairs);
        post_form(self.addr, path, Some(&self.cookie), &all)
    }

    pub fn post_json(&self, path: &str, csrf: Option<&str>, body: &str) -> Resp {
        let mut h = vec![
            ("Content-Type", "application/json"),
            ("Cookie", self.cookie.as_str()),
        ];
        if let Some(t) = csrf {
            h.push(("X-CSRF-Token", t));
        }
        request(self.addr, "POST", path, &h, body.as_bytes())
    }
}
