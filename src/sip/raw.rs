//! Framing and the raw view of a SIP message: start line, unfolded header lines with
//! compact names expanded, and the body cut by Content-Length.
//!
//! Owns everything that must work on bytes a typed parser may refuse: finding where a
//! message ends (UDP datagram, TCP stream), keeping a UDP body that has no
//! Content-Length, and giving the validator and the error-response builder the header
//! lines exactly as sent. It must not interpret header values beyond what framing
//! needs; that is `validate` and `message`.

use std::fmt;

/// Why a message could not be framed. Each maps to a 400 where a response is possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    NoHeaderEnd,
    TooLarge,
    BadStartLine(&'static str),
    BadHeaderLine,
    HeaderNotUtf8,
    BadContentLength,
    ContentLengthBeyondMessage,
    MissingContentLengthOnStream,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::NoHeaderEnd => f.write_str("Incomplete Header Section"),
            FrameError::TooLarge => f.write_str("Message Too Large"),
            FrameError::BadStartLine(why) => write!(f, "Bad Start Line ({why})"),
            FrameError::BadHeaderLine => f.write_str("Malformed Header Line"),
            FrameError::HeaderNotUtf8 => f.write_str("Header Not UTF-8"),
            FrameError::BadContentLength => f.write_str("Bad Content-Length"),
            FrameError::ContentLengthBeyondMessage => f.write_str("Content-Length Exceeds Message"),
            FrameError::MissingContentLengthOnStream => f.write_str("Missing Content-Length"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request {
        method: String,
        uri: String,
        version: String,
    },
    Response {
        version: String,
        code: u32,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    /// Lower-case long form (`v` becomes `via`).
    pub name: String,
    /// Unfolded value with surrounding whitespace removed.
    pub value: String,
}

/// A framed message. `head` is the header section as received (up to and including the
/// blank line), so the typed parser can be run on exactly what arrived.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub start: StartLine,
    pub headers: Vec<RawHeader>,
    pub body: Vec<u8>,
    pub head: Vec<u8>,
}

impl RawMessage {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.as_str())
    }

    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name == name)
            .map(|h| h.value.as_str())
    }

    pub fn count(&self, name: &str) -> usize {
        self.headers.iter().filter(|h| h.name == name).count()
    }

    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The message as bytes with the body re-attached under a Content-Length that
    /// matches it, for the typed parser.
    pub fn normalized_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head.len() + self.body.len() + 24);
        match &self.start {
            StartLine::Request {
                method,
                uri,
                version,
            } => out.extend_from_slice(format!("{method} {uri} {version}\r\n").as_bytes()),
            StartLine::Response {
                version,
                code,
                reason,
            } => out.extend_from_slice(format!("{version} {code} {reason}\r\n").as_bytes()),
        }
        for h in &self.headers {
            if h.name == "content-length" {
                continue;
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", self.body.len()).as_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

/// Expands RFC 3261 §7.3.3 compact forms (and a few from extensions).
pub fn canonical_name(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let long = match lower.as_str() {
        "i" => "call-id",
        "m" => "contact",
        "e" => "content-encoding",
        "l" => "content-length",
        "c" => "content-type",
        "f" => "from",
        "s" => "subject",
        "k" => "supported",
        "t" => "to",
        "v" => "via",
        "o" => "event",
        "r" => "refer-to",
        "u" => "allow-events",
        "x" => "session-expires",
        _ => return lower,
    };
    long.to_string()
}

pub fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&c)
}

fn find_header_end(buf: &[u8]) -> Option<(usize, usize)> {
    // Returns (end of header lines, start of body). Accepts bare LF line ends, which
    // some embedded phones still send.
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

fn parse_start_line(line: &str) -> Result<StartLine, FrameError> {
    if line.starts_with("SIP/") {
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_string();
        let code_s = parts
            .next()
            .ok_or(FrameError::BadStartLine("no status code"))?;
        if code_s.len() != 3 || !code_s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FrameError::BadStartLine("status code is not three digits"));
        }
        let code: u32 = code_s
            .parse()
            .map_err(|_| FrameError::BadStartLine("status code"))?;
        if !(100..=699).contains(&code) {
            return Err(FrameError::BadStartLine("status code out of range"));
        }
        let reason = parts.next().unwrap_or_default().to_string();
        return Ok(StartLine::Response {
            version,
            code,
            reason,
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version: exactly two single spaces.
    let parts: Vec<&str> = line.split(' ').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(FrameError::BadStartLine(
            "request line is not METHOD SP URI SP VERSION",
        ));
    }
    if !parts[0].bytes().all(is_token_char) {
        return Err(FrameError::BadStartLine("method is not a token"));
    }
    if !parts[2].starts_with("SIP/") {
        return Err(FrameError::BadStartLine("no SIP version"));
    }
    Ok(StartLine::Request {
        method: parts[0].to_string(),
        uri: parts[1].to_string(),
        version: parts[2].to_string(),
    })
}

fn parse_head(head: &[u8]) -> Result<(StartLine, Vec<RawHeader>), FrameError> {
    let text = std::str::from_utf8(head).map_err(|_| FrameError::HeaderNotUtf8)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start = parse_start_line(lines.next().ok_or(FrameError::BadStartLine("empty"))?)?;
    let mut headers: Vec<RawHeader> = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // Folded continuation (RFC 3261 §7.3.1): joins the previous value with one SP.
            let last = headers.last_mut().ok_or(FrameError::BadHeaderLine)?;
            last.value.push(' ');
            last.value.push_str(line.trim());
            continue;
        }
        let (name, value) = line.split_once(':').ok_or(FrameError::BadHeaderLine)?;
        let name = name.trim_end_matches([' ', '\t']);
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err(FrameError::BadHeaderLine);
        }
        headers.push(RawHeader {
            name: canonical_name(name),
            value: value.trim().to_string(),
        });
    }
    for h in &mut headers {
        let trimmed = h.value.trim();
        if trimmed.len() != h.value.len() {
            h.value = trimmed.to_string();
        }
    }
    Ok((start, headers))
}

fn content_length(headers: &[RawHeader]) -> Result<Option<usize>, FrameError> {
    let mut found = None;
    for h in headers.iter().filter(|h| h.name == "content-length") {
        let v = h.value.trim();
        if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FrameError::BadContentLength);
        }
        let n: usize = v.parse().map_err(|_| FrameError::BadContentLength)?;
        if found.is_some_and(|f| f != n) {
            return Err(FrameError::BadContentLength);
        }
        found = Some(n);
    }
    Ok(found)
}

/// Frames one UDP datagram. Bytes after the Content-Length are discarded (RFC 3261
/// §18.3); without Content-Length the body runs to the end of the datagram.
pub fn frame_datagram(buf: &[u8]) -> Result<RawMessage, FrameError> {
    let buf = trim_leading_crlf(buf);
    let (head_end, body_start) = find_header_end(buf).ok_or(FrameError::NoHeaderEnd)?;
    let (start, headers) = parse_head(&buf[..head_end])?;
    let rest = &buf[body_start..];
    let body = match content_length(&headers)? {
        Some(n) if n > rest.len() => return Err(FrameError::ContentLengthBeyondMessage),
        Some(n) => rest[..n].to_vec(),
        None => rest.to_vec(),
    };
    Ok(RawMessage {
        start,
        headers,
        body,
        head: buf[..body_start].to_vec(),
    })
}

/// Like [`frame_datagram`] but, on error, still returns what could be read of the
/// header section so that a 400 can be addressed to the sender.
pub fn frame_datagram_lenient(
    buf: &[u8],
) -> Result<RawMessage, (FrameError, Option<Box<RawMessage>>)> {
    frame_datagram(buf).map_err(|e| {
        let buf = trim_leading_crlf(buf);
        let partial = find_header_end(buf)
            .and_then(|(end, start)| {
                parse_head(&buf[..end]).ok().map(|(s, h)| RawMessage {
                    start: s,
                    headers: h,
                    body: Vec::new(),
                    head: buf[..start].to_vec(),
                })
            })
            .or_else(|| salvage_headers(buf));
        (e, partial.map(Box::new))
    })
}

/// Best effort for messages whose start line or a header line is broken: keeps the
/// lines that look like headers, so a 400 can still carry Via, From, To, Call-ID, CSeq.
fn salvage_headers(buf: &[u8]) -> Option<RawMessage> {
    let end = find_header_end(buf).map(|(e, _)| e).unwrap_or(buf.len());
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    let first = lines.next()?;
    let method = first.split(' ').next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for line in lines {
        if let Some((n, v)) = line.split_once(':') {
            let n = n.trim();
            if !n.is_empty() && n.bytes().all(is_token_char) {
                headers.push(RawHeader {
                    name: canonical_name(n),
                    value: v.trim().to_string(),
                });
            }
        }
    }
    Some(RawMessage {
        start: StartLine::Request {
            method,
            uri: String::new(),
            version: "SIP/2.0".into(),
        },
        headers,
        body: Vec::new(),
        head: Vec::new(),
    })
}

fn trim_leading_crlf(mut buf: &[u8]) -> &[u8] {
    while let [b'\r' | b'\n', rest @ ..] = buf {
        buf = rest;
    }
    buf
}

/// Splits a TCP byte stream into messages by Content-Length (RFC 3261 §18.3), which is
/// mandatory on streams. Refuses a message larger than `max_message` bytes.
///
/// Work per byte received is constant: the search for the end of the header section
/// resumes where the last one stopped, a head is parsed once (not again for every
/// piece of its body), and messages taken from the buffer are only cut off it at the
/// next push, so a push holding many messages is not shifted once per message.
/// (Rescanning made a 60 kB message sent one byte per segment cost 0.8-2 s of CPU.)
#[derive(Debug)]
pub struct StreamFramer {
    buf: Vec<u8>,
    max_message: usize,
    /// Bytes at the start of `buf` that belong to messages already returned.
    consumed: usize,
    /// Bytes after `consumed` already searched for the end of the header section.
    searched: usize,
    /// The current message's head, once complete, while its body arrives.
    head: Option<PendingHead>,
}

#[derive(Debug)]
struct PendingHead {
    start: StartLine,
    headers: Vec<RawHeader>,
    /// Offsets from the start of the message.
    body_start: usize,
    body_len: usize,
}

#[derive(Debug)]
pub enum StreamItem {
    Message(RawMessage),
    /// A framing error; the connection cannot be resynchronised and must be closed
    /// after answering (if the partial message allows an answer).
    Fatal(FrameError, Option<RawMessage>),
}

impl StreamFramer {
    pub fn new(max_message: usize) -> Self {
        StreamFramer {
            buf: Vec::new(),
            max_message,
            consumed: 0,
            searched: 0,
            head: None,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        // What is left after the last message returned arrived in the last push, so
        // cutting here costs no more than that push did.
        if self.consumed > 0 {
            self.buf.drain(..self.consumed);
            self.consumed = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Next complete message, if any.
    pub fn next_item(&mut self) -> Option<StreamItem> {
        if self.head.is_none() {
            if self.searched == 0 {
                // RFC 5626 keep-alives (CRLF CRLF) and stray line ends between messages.
                self.consumed += self.buf[self.consumed..]
                    .iter()
                    .take_while(|b| matches!(b, b'\r' | b'\n'))
                    .count();
            }
            let msg = &self.buf[self.consumed..];
            if msg.is_empty() {
                return None;
            }
            // A line end that straddled the last search's end is looked at again.
            let from = self.searched.saturating_sub(2);
            let Some((head_end, body_start)) =
                find_header_end(&msg[from..]).map(|(end, body)| (from + end, from + body))
            else {
                self.searched = msg.len();
                if msg.len() > self.max_message {
                    return Some(StreamItem::Fatal(FrameError::TooLarge, None));
                }
                return None;
            };
            let (start, headers) = match parse_head(&msg[..head_end]) {
                Ok(x) => x,
                Err(e) => {
                    let partial = salvage_headers(&msg[..head_end]);
                    return Some(StreamItem::Fatal(e, partial));
                }
            };
            let partial = |start: StartLine, headers: Vec<RawHeader>| RawMessage {
                start,
                headers,
                body: Vec::new(),
                head: Vec::new(),
            };
            let body_len = match content_length(&headers) {
                Ok(Some(n)) => n,
                Ok(None) => {
                    return Some(StreamItem::Fatal(
                        FrameError::MissingContentLengthOnStream,
                        Some(partial(start, headers)),
                    ))
                }
                Err(e) => return Some(StreamItem::Fatal(e, Some(partial(start, headers)))),
            };
            if body_start.saturating_add(body_len) > self.max_message {
                return Some(StreamItem::Fatal(
                    FrameError::TooLarge,
                    Some(partial(start, headers)),
                ));
            }
            self.head = Some(PendingHead {
                start,
                headers,
                body_start,
                body_len,
            });
        }
        let pending = self.head.as_ref()?;
        let end = pending.body_start + pending.body_len;
        let msg = &self.buf[self.consumed..];
        if msg.len() < end {
            return None;
        }
        let PendingHead {
            start,
            headers,
            body_start,
            ..
        } = self.head.take()?;
        let body = msg[body_start..end].to_vec();
        let head = msg[..body_start].to_vec();
        self.consumed += end;
        self.searched = 0;
        Some(StreamItem::Message(RawMessage {
            start,
            headers,
            body,
            head,
        }))
    }
}

/// Splits a header value at top-level commas (not inside quotes or `<>`).
pub fn split_comma_values(value: &str) -> Vec<&str> {
    super::scan::split_unquoted(value, ',', true)
        .into_iter()
        .map(str::trim)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nf: <sip:x@y>;tag=1\r\nt: <sip:a@b>\r\ni: abc\r\nCSeq: 1 OPTIONS\r\nSubject: one\r\n two\r\n\r\n";

    #[test]
    fn compact_names_and_folding() {
        let m = frame_datagram(OPTIONS).unwrap();
        assert_eq!(m.header("via"), Some("SIP/2.0/UDP h;branch=z9hG4bK1"));
        assert_eq!(m.header("call-id"), Some("abc"));
        assert_eq!(m.header("subject"), Some("one two"));
        assert_eq!(m.method(), Some("OPTIONS"));
    }

    #[test]
    fn udp_body_without_content_length_is_kept() {
        let msg = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\nv=0\r\n";
        let m = frame_datagram(msg).unwrap();
        assert_eq!(m.body, b"v=0\r\n");
    }

    #[test]
    fn trailing_bytes_after_content_length_are_discarded() {
        let msg =
            b"REGISTER sip:a SIP/2.0\r\nContent-Length: 0\r\n\r\nINVITE sip:x SIP/2.0\r\n\r\n";
        let m = frame_datagram(msg).unwrap();
        assert!(m.body.is_empty());
    }

    #[test]
    fn content_length_errors() {
        let too_long = b"INVITE sip:a SIP/2.0\r\nContent-Length: 9999\r\n\r\nabc";
        assert_eq!(
            frame_datagram(too_long).unwrap_err(),
            FrameError::ContentLengthBeyondMessage
        );
        let negative = b"INVITE sip:a SIP/2.0\r\nContent-Length: -999\r\n\r\nabc";
        assert_eq!(
            frame_datagram(negative).unwrap_err(),
            FrameError::BadContentLength
        );
        let two = b"INVITE sip:a SIP/2.0\r\nContent-Length: 3\r\nl: 2\r\n\r\nabc";
        assert_eq!(
            frame_datagram(two).unwrap_err(),
            FrameError::BadContentLength
        );
    }

    #[test]
    fn request_line_whitespace_is_strict() {
        for bad in [
            &b"INVITE  sip:a SIP/2.0\r\n\r\n"[..],
            b"INVITE sip:a SIP/2.0 \r\n\r\n",
            b"INVITE sip:a; lr SIP/2.0\r\n\r\n",
        ] {
            assert!(matches!(
                frame_datagram(bad),
                Err(FrameError::BadStartLine(_))
            ));
        }
    }

    #[test]
    fn non_utf8_header_is_refused_not_truncated() {
        let msg = b"OPTIONS sip:a SIP/2.0\r\nFrom: \xe9 <sip:a@b>\r\nVia: SIP/2.0/UDP h\r\n\r\n";
        assert_eq!(frame_datagram(msg).unwrap_err(), FrameError::HeaderNotUtf8);
        let (_, partial) = frame_datagram_lenient(msg).unwrap_err();
        assert_eq!(partial.unwrap().header("via"), Some("SIP/2.0/UDP h"));
    }

    #[test]
    fn stream_framer_splits_and_waits() {
        let mut f = StreamFramer::new(4096);
        let one = b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 3\r\n\r\nabc";
        f.push(b"\r\n\r\n");
        f.push(&one[..20]);
        assert!(f.next_item().is_none());
        f.push(&one[20..]);
        f.push(one);
        for _ in 0..2 {
            match f.next_item() {
                Some(StreamItem::Message(m)) => assert_eq!(m.body, b"abc"),
                other => panic!("{other:?}"),
            }
        }
        assert!(f.next_item().is_none());
    }

    /// Pieces of any size, a line end split across them, a keep-alive between
    /// messages: the same messages as one push (the search resumes, it does not
    /// restart).
    #[test]
    fn stream_framer_same_messages_in_pieces_of_any_size() {
        let stream: &[u8] = b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 3\r\n\r\nabc\r\n\r\nBYE sip:b SIP/2.0\nContent-Length: 0\n\nINFO sip:c SIP/2.0\r\nContent-Length: 2\r\n\r\nxy";
        let frame_all = |piece: usize| {
            let mut f = StreamFramer::new(4096);
            let mut out = Vec::new();
            for p in stream.chunks(piece) {
                f.push(p);
                while let Some(item) = f.next_item() {
                    match item {
                        StreamItem::Message(m) => out.push((m.method().map(str::to_owned), m.body)),
                        StreamItem::Fatal(e, _) => panic!("piece {piece}: {e}"),
                    }
                }
            }
            out
        };
        let whole = frame_all(stream.len());
        assert_eq!(whole.len(), 3, "{whole:?}");
        assert_eq!(whole[2].1, b"xy");
        for piece in 1..stream.len() {
            assert_eq!(frame_all(piece), whole, "piece {piece}");
        }
    }

    /// A head that never ends is refused once it passes the limit, also when it comes
    /// one byte at a time.
    #[test]
    fn stream_framer_refuses_an_endless_head_sent_bytewise() {
        let mut f = StreamFramer::new(1024);
        f.push(b"INVITE sip:a SIP/2.0\r\n");
        let mut refused = false;
        for _ in 0..2000 {
            f.push(b"X");
            match f.next_item() {
                None => {}
                Some(StreamItem::Fatal(FrameError::TooLarge, None)) => {
                    refused = true;
                    break;
                }
                Some(other) => panic!("{other:?}"),
            }
        }
        assert!(refused);
    }

    /// Every item the framer gives for `stream` pushed in pieces of `piece` bytes.
    fn frame_stream(stream: &[u8], piece: usize, max: usize) -> Vec<StreamItem> {
        let mut f = StreamFramer::new(max);
        let mut out = Vec::new();
        for p in stream.chunks(piece) {
            f.push(p);
            while let Some(item) = f.next_item() {
                let fatal = matches!(item, StreamItem::Fatal(..));
                out.push(item);
                if fatal {
                    return out;
                }
            }
        }
        out
    }

    fn invite_with_sdp() -> Vec<u8> {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";
        format!(
            "INVITE sip:hotline@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5062;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:hotline@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
        .into_bytes()
    }

    /// A whole INVITE with its SDP, one byte per push: one message, head and body
    /// exactly as sent, and nothing before its last byte.
    #[test]
    fn stream_framer_byte_by_byte() {
        let m = invite_with_sdp();
        let mut f = StreamFramer::new(4096);
        for (i, b) in m.iter().enumerate() {
            f.push(std::slice::from_ref(b));
            match f.next_item() {
                None => assert!(i + 1 < m.len(), "nothing after the last byte"),
                Some(StreamItem::Message(got)) => {
                    assert_eq!(i + 1, m.len(), "a message before its last byte");
                    assert_eq!(got.method(), Some("INVITE"));
                    assert_eq!([got.head, got.body].concat(), m);
                }
                Some(other) => panic!("{other:?}"),
            }
        }
        assert!(f.next_item().is_none());
    }

    /// Many messages in one push come out in order, and what they used of the buffer
    /// is released at the next push.
    #[test]
    fn stream_framer_pipelined_messages_in_one_push() {
        let one = invite_with_sdp();
        let mut f = StreamFramer::new(4096);
        f.push(&one.repeat(200));
        f.push(&one[..10]);
        let mut n = 0;
        while let Some(item) = f.next_item() {
            match item {
                StreamItem::Message(m) => assert_eq!([m.head, m.body].concat(), one),
                other => panic!("{other:?}"),
            }
            n += 1;
        }
        assert_eq!(n, 200);
        f.push(&one[10..]);
        assert_eq!(f.buf.len(), one.len(), "the 200 messages are cut off");
        assert!(matches!(f.next_item(), Some(StreamItem::Message(_))));
        assert!(f.next_item().is_none());
    }

    /// RFC 5626 keep-alives (CRLF CRLF, alone or split) before, between and after
    /// messages give nothing and do not disturb framing.
    #[test]
    fn stream_framer_keepalives_between_messages() {
        let one = invite_with_sdp();
        let stream = [
            &b"\r\n\r\n"[..],
            &one,
            b"\r\n\r\n\r\n\r\n",
            &one,
            b"\r\n\r\n",
            &one,
            b"\r\n\r\n",
        ]
        .concat();
        for piece in [1, 2, 3, 5, 64, stream.len()] {
            let items = frame_stream(&stream, piece, 4096);
            assert_eq!(items.len(), 3, "piece {piece}");
            for item in items {
                match item {
                    StreamItem::Message(m) => assert_eq!([m.head, m.body].concat(), one),
                    other => panic!("piece {piece}: {other:?}"),
                }
            }
        }
        // Keep-alives alone, any number of them, are nothing and hold no memory.
        let mut f = StreamFramer::new(64);
        for _ in 0..1000 {
            f.push(b"\r\n\r\n");
            assert!(f.next_item().is_none());
        }
        assert!(f.buf.len() <= 4);
    }

    /// A message of exactly the limit passes; one byte more of body or of head is
    /// refused, whole or bytewise, and an absurd Content-Length is refused at once.
    #[test]
    fn stream_framer_oversize() {
        let max = 512;
        let head = |len: usize| format!("MESSAGE sip:a SIP/2.0\r\nContent-Length: {len}\r\n\r\n");
        let fits = max - head(100).len();
        let exact = [head(fits).into_bytes(), vec![b'b'; fits]].concat();
        assert_eq!(exact.len(), max);
        let over = [head(fits + 1).into_bytes(), vec![b'b'; fits + 1]].concat();
        for piece in [1, 7, max + 1] {
            let items = frame_stream(&exact, piece, max);
            assert!(
                matches!(items[..], [StreamItem::Message(_)]),
                "piece {piece}: {items:?}"
            );
            let items = frame_stream(&over, piece, max);
            assert!(
                matches!(
                    items[..],
                    [StreamItem::Fatal(FrameError::TooLarge, Some(_))]
                ),
                "piece {piece}: {items:?}"
            );
        }
        let absurd = head(999_999_999).into_bytes();
        let items = frame_stream(&absurd, absurd.len(), max);
        assert!(
            matches!(
                items[..],
                [StreamItem::Fatal(FrameError::TooLarge, Some(_))]
            ),
            "{items:?}"
        );
    }

    #[test]
    fn stream_framer_refuses_missing_length_and_oversize() {
        let mut f = StreamFramer::new(4096);
        f.push(b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n");
        assert!(matches!(
            f.next_item(),
            Some(StreamItem::Fatal(
                FrameError::MissingContentLengthOnStream,
                Some(_)
            ))
        ));
        let mut f = StreamFramer::new(1024);
        f.push(&vec![b'a'; 2000]);
        assert!(matches!(
            f.next_item(),
            Some(StreamItem::Fatal(FrameError::TooLarge, None))
        ));
    }

    #[test]
    fn comma_split_respects_quotes_and_brackets() {
        let v = split_comma_values("\"a, b\" <sip:x@y;p=1,2>, <sip:z@w>");
        assert_eq!(v, vec!["\"a, b\" <sip:x@y;p=1,2>", "<sip:z@w>"]);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for _ in 0..20_000 {
            let len = (x % 300) as usize;
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(b"SIP/2.0 :\r\n;,<>\"a1 \t"[(x % 20) as usize]);
            }
            let _ = frame_datagram_lenient(&buf);
            let mut f = StreamFramer::new(1024);
            f.push(&buf);
            while let Some(StreamItem::Message(_)) = f.next_item() {}
        }
    }
}
