//! Batched, non-blocking UDP over IPv4: `recvmmsg` with the kernel's receive
//! timestamp and the socket's drop counter per datagram, `sendmmsg` to many
//! destinations from one socket. Linux only (libc).
//!
//! Receive timestamps come from the kernel (SO_TIMESTAMPNS): on loopback a
//! datagram is stamped in the sender's `sendto`, so intervals measure the server's
//! send times, not when this process got round to reading.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

pub const BATCH: usize = 64;
const CONTROL: usize = 64;

fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: a valid fd and a pointer to an int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A non-blocking UDP socket on `ip` with `buffer` bytes of send and receive
/// buffer (forced past the sysctl limits when privileged), and receive timestamps
/// and drop counts switched on.
pub fn bind(ip: Ipv4Addr, port: u16, buffer: i32) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(SocketAddrV4::new(ip, port))?;
    s.set_nonblocking(true)?;
    let fd = s.as_raw_fd();
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(fd, libc::SOL_SOCKET, force, buffer).is_err() {
            setsockopt_int(fd, libc::SOL_SOCKET, plain, buffer)?;
        }
    }
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)?;
    Ok(s)
}

pub fn local_v4(s: &UdpSocket) -> io::Result<SocketAddrV4> {
    match s.local_addr()? {
        std::net::SocketAddr::V4(a) => Ok(a),
        other => Err(io::Error::other(format!("not IPv4: {other}"))),
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut s: libc::sockaddr_in = unsafe { zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    s
}

fn from_sockaddr(s: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)),
        u16::from_be(s.sin_port),
    )
}

/// One received datagram.
pub struct Datagram<'a> {
    pub data: &'a [u8],
    pub from: SocketAddrV4,
    /// Kernel receive time, CLOCK_REALTIME nanoseconds.
    pub stamp_ns: Option<i64>,
    /// The socket's count of datagrams dropped for a full receive buffer so far.
    pub drops: Option<u32>,
}

/// Buffers for one `recvmmsg` of up to `BATCH` datagrams of up to `size` bytes.
pub struct Receiver {
    size: usize,
    bufs: Vec<u8>,
    names: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    control: Vec<[u64; CONTROL / 8]>,
    hdrs: Vec<libc::mmsghdr>,
    count: usize,
}

impl Receiver {
    pub fn new(size: usize) -> Receiver {
        Receiver {
            size,
            bufs: vec![0; size * BATCH],
            // SAFETY (all three): plain C structs, all-zero is valid; pointers are
            // filled in before every call.
            names: vec![unsafe { zeroed() }; BATCH],
            iovs: vec![unsafe { zeroed() }; BATCH],
            control: vec![[0; CONTROL / 8]; BATCH],
            hdrs: vec![unsafe { zeroed() }; BATCH],
            count: 0,
        }
    }

    /// Reads what is waiting (up to `BATCH`) without blocking; returns how many.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * self.size..].as_mut_ptr() as *mut libc::c_void,
                iov_len: self.size,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = &mut self.names[i] as *mut libc::sockaddr_in as *mut libc::c_void;
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.control[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = CONTROL as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points into buffers owned by self that outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            self.count = 0;
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        self.count = n as usize;
        Ok(self.count)
    }

    pub fn get(&self, i: usize) -> Datagram<'_> {
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(self.size);
        let mut stamp_ns = None;
        let mut drops = None;
        // SAFETY: the kernel filled msg_control up to msg_controllen; the CMSG
        // macros stay inside it.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET {
                    if (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                        let ts =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                        stamp_ns = Some(ts.tv_sec * 1_000_000_000 + ts.tv_nsec);
                    } else if (*c).cmsg_type == libc::SO_RXQ_OVFL {
                        drops = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const u32));
                    }
                }
                c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
            }
        }
        Datagram {
            data: &self.bufs[i * self.size..i * self.size + len],
            from: from_sockaddr(&self.names[i]),
            stamp_ns,
            drops,
        }
    }
}

/// Up to `BATCH` datagrams of up to `size` bytes waiting for one `sendmmsg`.
pub struct Sender {
    size: usize,
    bufs: Vec<u8>,
    lens: Vec<usize>,
    dests: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    count: usize,
    /// Datagrams the kernel refused (buffer full); lost like any UDP datagram.
    pub refused: u64,
    pub sent: u64,
    pub syscalls: u64,
}

impl Sender {
    pub fn new(size: usize) -> Sender {
        Sender {
            size,
            bufs: vec![0; size * BATCH],
            lens: vec![0; BATCH],
            // SAFETY: plain C structs, all-zero is valid.
            dests: vec![unsafe { zeroed() }; BATCH],
            iovs: vec![unsafe { zeroed() }; BATCH],
            hdrs: vec![unsafe { zeroed() }; BATCH],
            count: 0,
            refused: 0,
            sent: 0,
            syscalls: 0,
        }
    }

    /// Queues a datagram written by `fill` (which returns its length); sends the
    /// batch first when it is full.
    pub fn push(&mut self, fd: RawFd, to: SocketAddrV4, fill: impl FnOnce(&mut [u8]) -> usize) {
        if self.count == BATCH {
            self.flush(fd);
        }
        let i = self.count;
        let len = fill(&mut self.bufs[i * self.size..(i + 1) * self.size]);
        self.lens[i] = len.min(self.size);
        self.dests[i] = sockaddr(to);
        self.count += 1;
    }

    pub fn push_bytes(&mut self, fd: RawFd, to: SocketAddrV4, data: &[u8]) {
        if data.len() > self.size {
            self.refused += 1;
            return;
        }
        self.push(fd, to, |b| {
            b[..data.len()].copy_from_slice(data);
            data.len()
        });
    }

    pub fn flush(&mut self, fd: RawFd) {
        let mut start = 0;
        while start < self.count {
            for i in start..self.count {
                self.iovs[i] = libc::iovec {
                    iov_base: self.bufs[i * self.size..].as_mut_ptr() as *mut libc::c_void,
                    iov_len: self.lens[i],
                };
                let h = &mut self.hdrs[i].msg_hdr;
                h.msg_name = &mut self.dests[i] as *mut libc::sockaddr_in as *mut libc::c_void;
                h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                h.msg_iov = &mut self.iovs[i];
                h.msg_iovlen = 1;
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
                h.msg_flags = 0;
            }
            // SAFETY: headers point into buffers owned by self for the call's duration.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[start..].as_mut_ptr(),
                    (self.count - start) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            self.syscalls += 1;
            if n <= 0 {
                let e = io::Error::last_os_error();
                if n < 0 && e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // Full buffer or an error on the first datagram: drop it, go on.
                self.refused += 1;
                start += 1;
                continue;
            }
            self.sent += n as u64;
            start += n as usize;
        }
        self.count = 0;
    }
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC now, to place kernel receive stamps on the
/// monotonic time line of `Instant`.
pub fn realtime_offset_ns() -> i64 {
    let read = |clock| {
        // SAFETY: valid clock id and out pointer.
        let mut ts: libc::timespec = unsafe { zeroed() };
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec * 1_000_000_000 + ts.tv_nsec
    };
    let m0 = read(libc::CLOCK_MONOTONIC);
    let r = read(libc::CLOCK_REALTIME);
    let m1 = read(libc::CLOCK_MONOTONIC);
    r - (m0 + m1) / 2
}

/// CLOCK_MONOTONIC now in nanoseconds (the clock `Instant` reads on Linux).
pub fn monotonic_ns() -> i64 {
    // SAFETY: valid clock id and out pointer.
    let mut ts: libc::timespec = unsafe { zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn batches_go_out_and_come_back_with_kernel_stamps() {
        let a = bind(Ipv4Addr::LOCALHOST, 0, 1 << 20).unwrap();
        let b = bind(Ipv4Addr::LOCALHOST, 0, 1 << 20).unwrap();
        let to = local_v4(&b).unwrap();
        let mut tx = Sender::new(200);
        for i in 0..100u8 {
            tx.push(a.as_raw_fd(), to, |buf| {
                buf[0] = i;
                1 + i as usize
            });
        }
        tx.flush(a.as_raw_fd());
        assert_eq!(tx.sent, 100);
        let before = monotonic_ns() + realtime_offset_ns();
        let mut rx = Receiver::new(256);
        let mut got = Vec::new();
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while got.len() < 100 {
            assert!(std::time::Instant::now() < until, "datagrams arrive");
            let n = rx.recv(b.as_raw_fd()).unwrap();
            if n == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            for i in 0..n {
                let d = rx.get(i);
                assert_eq!(d.from, local_v4(&a).unwrap());
                assert_eq!(d.data.len(), 1 + d.data[0] as usize);
                let stamp = d.stamp_ns.expect("kernel timestamp");
                assert!((stamp - before).abs() < 1_000_000_000, "stamp near now");
                assert_eq!(d.drops, None, "no drops reported while none happened");
                got.push(d.data[0]);
            }
        }
        assert_eq!(got, (0..100).collect::<Vec<u8>>());
    }
}
