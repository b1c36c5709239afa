#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/seeds/ from the SIP torture messages, the shipped
flow and prompt files, and hand-made RTP, WAV and digest inputs. Run it again after the
torture corpus or the flow format changes; its output is kept in git."""
import hashlib
import os
import pathlib
import shutil
import struct

FUZZ = pathlib.Path(__file__).resolve().parent
ROOT = FUZZ.parent
SEEDS = FUZZ / "seeds"
TORTURE = sorted(p for p in (ROOT / "tests/data/sip-torture").rglob("*")
                 if p.is_file() and p.parent.name in ("rfc4475", "rfc5118"))
SEPARATOR = b"\n\x00\xffNEXT\n"


def write(target, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


SDP = (b"v=0\r\no=alice 2890844526 2890844526 IN IP4 127.0.0.1\r\ns=-\r\n"
       b"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8 101\r\n"
       b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
       b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n")


def request(method, cseq, branch, extra=b"", body=b"", to_tag=b"", uri=b"sip:hotline@127.0.0.1",
            call_id=b"fuzz-call-1", cseq_method=None):
    to = b"<sip:hotline@127.0.0.1>" + (b";tag=" + to_tag if to_tag else b"")
    head = (method + b" " + uri + b" SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK" + branch + b"\r\n"
            b"Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=c1\r\nTo: " + to + b"\r\n"
            b"Call-ID: " + call_id + b"\r\nCSeq: " + str(cseq).encode() + b" " +
            (cseq_method or method) + b"\r\nContact: <sip:caller@127.0.0.1:5062>\r\n" + extra)
    if body:
        head += b"Content-Type: application/sdp\r\n"
    return head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


INVITE = request(b"INVITE", 1, b"inv1", body=SDP)
ACK = request(b"ACK", 1, b"ack1", to_tag=b"$TAG")
BYE = request(b"BYE", 2, b"bye1", to_tag=b"$TAG")
REINVITE = request(b"INVITE", 3, b"reinv1", to_tag=b"$TAG", body=SDP.replace(b"sendrecv", b"sendonly"))
INFO = request(b"INFO", 4, b"info1", to_tag=b"$TAG",
               extra=b"Content-Type: application/dtmf-relay\r\n", body=b"Signal=5\r\nDuration=160\r\n")
CANCEL = request(b"CANCEL", 1, b"inv1")
OPTIONS = request(b"OPTIONS", 1, b"opt1")
REGISTER = (b"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKr1\r\n"
            b"Max-Forwards: 70\r\nFrom: <sip:anna@127.0.0.1>;tag=a1\r\nTo: <sip:anna@127.0.0.1>\r\n"
            b"Call-ID: reg-1\r\nCSeq: 1 REGISTER\r\nContact: <sip:anna@127.0.0.1:5062>\r\nExpires: 600\r\n"
            b"Content-Length: 0\r\n\r\n")
AUTH = (b'Digest username="anna", realm="hotline", nonce="0000018c2b1a7f00aabbccddeeff00112233445566778899aabbccddeeff0011", '
        b'uri="sip:127.0.0.1", response="6629fae49393a05397450978507c4ef1", algorithm=MD5, '
        b'qop=auth, nc=00000001, cnonce="0a4f113b", opaque="5ccc069c403ebaf9f0171e9517f40e41"')
RESPONSE_200 = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKout1\r\n"
                b"From: <sip:hotline@127.0.0.1>;tag=h1\r\nTo: <sip:anna@127.0.0.1>;tag=p1\r\n"
                b"Call-ID: out-1\r\nCSeq: 1 INVITE\r\nContact: <sip:anna@127.0.0.1:5062>\r\n"
                b"Content-Type: application/sdp\r\nContent-Length: " + str(len(SDP)).encode() +
                b"\r\n\r\n" + SDP)


def records(*recs):
    return SEPARATOR.join(bytes([control]) + data for control, data in recs)


def sip_seeds():
    messages = [p.read_bytes() for p in TORTURE] + [
        INVITE, ACK, BYE, REINVITE, INFO, CANCEL, OPTIONS, REGISTER,
        REGISTER.replace(b"Expires: 600\r\n", b"Authorization: " + AUTH + b"\r\n"), RESPONSE_200]
    for m in messages:
        write("sip_frame", m)
        write("sip_frame", b"\x07" + m)  # stream pieces of 7 bytes
        write("sip_endpoint", records((0, m)))
        write("sip_endpoint", records((4, m)))  # the same over TCP
    tcp = 4
    later = 8  # 250 ms on
    write("sip_endpoint", records((0, INVITE), (0, ACK), (later * 8, INFO), (later * 8, REINVITE),
                                  (0, ACK.replace(b"CSeq: 1", b"CSeq: 3")), (later * 20, BYE)))
    write("sip_endpoint", records((0, INVITE), (0, INVITE), (0, CANCEL), (later * 31, ACK)))
    write("sip_endpoint", records((0, INVITE), (later * 31,  b""), (later * 31, b""), (0, ACK)))
    write("sip_endpoint", records((tcp, INVITE), (tcp, ACK), (tcp, BYE)))
    write("sip_endpoint", records((tcp, INVITE[:40]), (tcp, INVITE[40:]), (tcp, b"\r\n\r\n"), (tcp, ACK)))
    write("sip_endpoint", records(*[(i, INVITE.replace(b"fuzz-call-1", b"fc%d" % i)) for i in range(4)],
                                  (0, INVITE.replace(b"fuzz-call-1", b"fc9"))))
    write("sip_endpoint", records((0, REGISTER), (0, REGISTER.replace(
        b"Expires: 600\r\n", b"Authorization: " + AUTH + b"\r\n").replace(b"CSeq: 1", b"CSeq: 2"))))
    write("sip_endpoint", records((0, request(b"INVITE", 1, b"fc1", uri=b"sip:*1@127.0.0.1")),
                                  (0, request(b"ACK", 1, b"fc1", uri=b"sip:*1@127.0.0.1", to_tag=b"$TAG"))))
    write("sip_endpoint", records((0, RESPONSE_200), (0, OPTIONS)))


def sdp_seeds():
    for p in TORTURE:
        m = p.read_bytes()
        if b"\nm=" in m and b"\r\n\r\n" in m:
            write("sdp", m.split(b"\r\n\r\n", 1)[1])
    write("sdp", SDP)
    write("sdp", SDP.replace(b"\r\n", b"\n"))
    write("sdp", SDP.replace(b"IN IP4 127.0.0.1", b"IN IP6 ::1"))
    write("sdp", SDP.replace(b"c=IN IP4 127.0.0.1", b"c=IN IP4 0.0.0.0").replace(b"sendrecv", b"inactive"))
    write("sdp", SDP + b"m=video 40002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n")
    write("sdp", SDP.replace(b"m=audio 40000 RTP/AVP 0 8 101", b"m=audio 40000 RTP/SAVP 0")
          + b"m=audio 40004 RTP/AVP 8\r\n")
    write("sdp", b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 40000 RTP/AVP 18 96\r\n"
                 b"c=IN IP4 127.0.0.1\r\na=rtpmap:96 opus/48000/2\r\n")
    # SDES: a usable line behind a foreign suite, and lifetimes, MKIs and parameters.
    key = b"inline:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e"
    write("sdp", SDP.replace(b"RTP/AVP 0 8 101", b"RTP/SAVP 0 8 101")
          + b"a=crypto:1 AES_256_CM_HMAC_SHA1_80 " + key + key[7:] + b"\r\n"
          + b"a=crypto:2 AES_CM_128_HMAC_SHA1_80 " + key + b"|2^31\r\n")
    write("sdp", SDP + b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 " + key + b"|2^40|1:4;" + key
          + b" KDR=1 UNENCRYPTED_SRTP\r\n")


def digest_seeds():
    write("digest", AUTH)
    write("digest", AUTH.replace(b"algorithm=MD5", b"algorithm=SHA-256").replace(
        b'response="6629fae49393a05397450978507c4ef1"', b'response="' + b"ab" * 32 + b'"'))
    write("digest", b'Digest username="anna", realm="hotline", nonce="abc", uri="sip:127.0.0.1", response="00"')
    write("digest", b'Digest username="a\\"nna",realm="hotline" ,nonce="x",uri="sip:127.0.0.1",response="1",qop="auth"')
    write("digest", b"NoOneKnowsThisScheme opaque-data=here")
    for p in TORTURE:
        for line in p.read_bytes().split(b"\r\n"):
            if line.lower().startswith((b"authorization:", b"proxy-authorization:")):
                write("digest", line.split(b":", 1)[1].strip())


def rtp_packet(pt, seq, ts, payload, marker=False, ssrc=0x1234):
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def rtp_records(setup, packets):
    out = bytes([setup])
    for step, p in packets:
        out += struct.pack("<HB", len(p), step) + p
    return out


def rtp_seeds():
    import math
    # A DTMF '5' in band (770 + 1336 Hz), then speech-like noise, as PCMU.
    def ulaw(sample):
        sign = 0x80 if sample < 0 else 0
        sample = min(abs(sample), 32635) + 132
        exp = max(0, sample.bit_length() - 8)
        mant = (sample >> (exp + 3)) & 0x0F
        return (~(sign | (exp << 4) | mant)) & 0xFF
    tone = bytes(ulaw(int(8000 * (math.sin(2 * math.pi * 770 * n / 8000) +
                                  math.sin(2 * math.pi * 1336 * n / 8000)))) for n in range(160))
    silence = b"\xff" * 160
    audio = [(20, rtp_packet(0, i, i * 160, tone if 2 <= i < 7 else silence)) for i in range(12)]
    for setup in (0, 4, 8, 16, 12, 28):
        write("rtp", rtp_records(setup, audio))
    # Reordered and lost packets, a timestamp jump, an SSRC change.
    shuffled = [audio[i] for i in (0, 2, 1, 5, 3, 9, 8)] + [(20, rtp_packet(0, 40000, 9_000_000, silence, ssrc=7))]
    write("rtp", rtp_records(8, shuffled))
    # RFC 4733: digit 1, three updates and three end packets, then '#'.
    ev = []
    for digit, base in ((1, 1000), (11, 3000)):
        for k, dur in enumerate((160, 320, 480, 640, 640, 640)):
            end = 0x80 if k >= 3 else 0
            ev.append((20, rtp_packet(101, base + k, base * 160, struct.pack("!BBH", digit, end | 10, dur), marker=k == 0)))
    write("rtp", rtp_records(2, ev))
    write("rtp", rtp_records(2 | 8, ev + audio))
    write("rtp", rtp_records(1 | 2 | 16, [(20, rtp_packet(8, i, i * 160, b"\xd5" * 160)) for i in range(5)] + ev))
    # Padding, CSRCs and a header extension.
    p = bytearray(rtp_packet(0, 1, 160, silence + b"\x00\x00\x03"))
    p[0] |= 0x20
    write("rtp", rtp_records(0, [(20, bytes(p))]))
    hdr = struct.pack("!BBHII", 0x92, 0, 2, 320, 5) + struct.pack("!II", 1, 2) + struct.pack("!HH", 0xBEDE, 1) + b"\x10\xaa\x00\x00"
    write("rtp", rtp_records(0, [(20, hdr + silence)]))


def wav(data_bytes, channels=1, fmt_tag=1, riff_size=None, data_size=None, extra_chunks=b"", block_align=None,
        bits=16):
    block_align = block_align or channels * bits // 8
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, 8000, 8000 * block_align, block_align, bits)
    if fmt_tag == 0xFFFE:
        fmt += struct.pack("<HHI", 22, bits, 0) + b"\x01\x00\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunks
    body += b"data" + struct.pack("<I", len(data_bytes) if data_size is None else data_size) + data_bytes
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def wav_seeds():
    samples = bytes(range(256)) * 2
    write("wav_repair", wav(samples))
    write("wav_repair", wav(samples, data_size=0, riff_size=36))  # a crash before the header update
    write("wav_repair", wav(samples + b"\x01", data_size=0, riff_size=0))  # a partial frame
    write("wav_repair", wav(samples, channels=2, data_size=0xFFFFFFFF, riff_size=0xFFFFFFFF))
    write("wav_repair", wav(samples, extra_chunks=b"LIST" + struct.pack("<I", 4) + b"INFO"))
    write("wav_repair", wav(samples, extra_chunks=b"junk" + struct.pack("<I", 3) + b"abc\x00", data_size=2))
    write("wav_repair", wav(samples, fmt_tag=0xFFFE, data_size=0))
    write("wav_repair", wav(samples, fmt_tag=3, bits=32, data_size=0))
    write("wav_repair", wav(b"", data_size=0))
    write("wav_repair", wav(samples)[:30])
    # The shipped beep, cut short of its header's sizes.
    beep = (ROOT / "prompts/ru/beep.wav").read_bytes()
    write("wav_repair", beep[:1000])


def flow_seeds():
    for p in (ROOT / "config/ivr.toml", ROOT / "src/ivr/engine/test_flow.toml"):
        write("flow_toml", p.read_bytes())


if __name__ == "__main__":
    shutil.rmtree(SEEDS, ignore_errors=True)
    sip_seeds()
    sdp_seeds()
    digest_seeds()
    rtp_seeds()
    wav_seeds()
    flow_seeds()
    for d in sorted(SEEDS.iterdir()):
        print(d.name, len(list(d.iterdir())))
