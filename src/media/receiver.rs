//! One thread receives every leg's RTP: a level-triggered epoll set over all media
//! sockets, and `recvmmsg` on each ready socket to take what is queued in one call.
//!
//! Written by hand on `libc` because the per-leg tokio task it replaces cost more than
//! the work it did: at 1,000 talking calls the receive tasks and their wake-ups were
//! about half of the server's profile (each packet meant a wake, a poll, the read and a
//! second read that found nothing). Here a packet costs its share of one `epoll_wait`
//! and one `recvmmsg`, and nothing is allocated per packet; the thread wakes at most
//! once a millisecond (`COALESCE`), so a busy wake takes many packets. What a packet
//! means stays in the sans-IO `MediaLeg::receive`; this file only moves bytes to it.

use super::core::LegHandle;
use crate::capacity::release_spare;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Ready sockets taken per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 1024;
/// Packets taken from one socket per `recvmmsg`; more than a leg gets in 20 ms even
/// after a burst, and the rest waits for the next round (level-triggered).
const PACKETS_PER_READ: usize = 8;
/// Large enough for any RTP packet we accept; longer ones are truncated and dropped.
const PACKET_BUF: usize = 1500;
/// The token of the eventfd that wakes the thread to stop.
const WAKE_TOKEN: u64 = 0;
/// After a wake the thread sleeps out the rest of this before it waits again, so
/// that one wake takes every packet that arrived meanwhile. Without it the thread
/// woke for nearly every packet: at 2,000 talking calls 62,000 wakes a second, and
/// the context switches were half of the thread's time. A packet waits at most
/// this long more, before a jitter buffer that holds tens of milliseconds.
const COALESCE: Duration = Duration::from_millis(1);

/// What a registered socket's packets are for.
enum Target {
    /// The leg's RTP.
    Rtp(LegHandle),
    /// Received and dropped: peers expect the RTCP port to be open.
    Discard,
}

struct Entry {
    socket: Arc<UdpSocket>,
    target: Target,
}

/// Sockets registered with the receive thread; dropping it stops the thread.
pub struct Receiver {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    epoll: OwnedFd,
    wake: OwnedFd,
    stop: AtomicBool,
    next_token: AtomicU64,
    entries: Mutex<HashMap<u64, Arc<Entry>>>,
}

/// A registration; the socket leaves the epoll set when this is dropped.
pub struct Registration {
    shared: Arc<Shared>,
    token: u64,
    fd: RawFd,
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Taken out of the table first: an event already fetched for it finds nothing.
        let entry = {
            let mut entries = lock(&self.shared.entries);
            let entry = entries.remove(&self.token);
            release_spare(&mut entries);
            entry
        };
        // SAFETY: epoll_ctl on our own epoll fd; the socket is still open (the entry
        // holds it), and DEL ignores the event argument.
        unsafe {
            libc::epoll_ctl(
                self.shared.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                self.fd,
                std::ptr::null_mut(),
            );
        }
        drop(entry);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Receiver {
    /// Starts the thread. `epoch` is the media clock's zero: packets are stamped in
    /// milliseconds since it, as the engine's commands and ticks are. `priority`:
    /// real-time priority of the thread (`super::realtime`; 0: normal).
    pub fn start(epoch: Instant, priority: u8) -> io::Result<Receiver> {
        // SAFETY: plain syscalls; the results are checked before being owned.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        let wake = unsafe { OwnedFd::from_raw_fd(wake) };
        add(epoll.as_raw_fd(), wake.as_raw_fd(), WAKE_TOKEN)?;
        let shared = Arc::new(Shared {
            epoll,
            wake,
            stop: AtomicBool::new(false),
            next_token: AtomicU64::new(WAKE_TOKEN + 1),
            entries: Mutex::new(HashMap::new()),
        });
        let thread = std::thread::Builder::new()
            .name("hotline-rtp-rx".into())
            .spawn({
                let shared = shared.clone();
                move || {
                    // Refusal is reported once by the clock, which asks for the same.
                    let _ = super::realtime::raise_current_thread(priority);
                    run(&shared, epoch)
                }
            })?;
        Ok(Receiver {
            shared,
            thread: Some(thread),
        })
    }

    /// Delivers the RTP arriving on `socket` to `leg` until the registration drops.
    pub fn add_rtp(&self, socket: Arc<UdpSocket>, leg: LegHandle) -> io::Result<Registration> {
        self.register(socket, Target::Rtp(leg))
    }

    /// Reads and drops whatever arrives on `socket` until the registration drops.
    pub fn add_discard(&self, socket: Arc<UdpSocket>) -> io::Result<Registration> {
        self.register(socket, Target::Discard)
    }

    fn register(&self, socket: Arc<UdpSocket>, target: Target) -> io::Result<Registration> {
        socket.set_nonblocking(true)?;
        let fd = socket.as_raw_fd();
        let token = self.shared.next_token.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.entries).insert(token, Arc::new(Entry { socket, target }));
        if let Err(e) = add(self.shared.epoll.as_raw_fd(), fd, token) {
            lock(&self.shared.entries).remove(&token);
            return Err(e);
        }
        Ok(Registration {
            shared: self.shared.clone(),
            token,
            fd,
        })
    }

    /// Sockets registered now.
    pub fn len(&self) -> usize {
        lock(&self.shared.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: an 8-byte write to our own eventfd.
        unsafe {
            libc::write(
                self.shared.wake.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn add(epoll: RawFd, fd: RawFd, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: both fds are open; `ev` outlives the call.
    if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Buffers for one `recvmmsg`, made once for the thread.
struct Batch {
    bufs: Box<[[u8; PACKET_BUF]; PACKETS_PER_READ]>,
    addrs: [libc::sockaddr_storage; PACKETS_PER_READ],
    iovecs: [libc::iovec; PACKETS_PER_READ],
    headers: [libc::mmsghdr; PACKETS_PER_READ],
}

impl Batch {
    fn new() -> Batch {
        // SAFETY: all-zero is a valid value of these plain C structs.
        unsafe {
            Batch {
                bufs: Box::new([[0u8; PACKET_BUF]; PACKETS_PER_READ]),
                addrs: std::mem::zeroed(),
                iovecs: std::mem::zeroed(),
                headers: std::mem::zeroed(),
            }
        }
    }

    /// Takes up to `PACKETS_PER_READ` packets queued on `fd`; 0 when none was.
    fn read(&mut self, fd: RawFd) -> usize {
        for i in 0..PACKETS_PER_READ {
            self.iovecs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: PACKET_BUF,
            };
            let h = &mut self.headers[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovecs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.headers[i].msg_len = 0;
        }
        // SAFETY: every header points into buffers owned by `self` that outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                PACKETS_PER_READ as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        n.max(0) as usize
    }

    /// The `i`th packet of the last read and its source; `None` for a truncated
    /// packet or an address family other than IP.
    fn packet(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let h = &self.headers[i];
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        let len = (h.msg_len as usize).min(PACKET_BUF);
        // SAFETY: the kernel wrote `msg_namelen` bytes of a socket address there.
        let addr = unsafe { socket2::SockAddr::new(self.addrs[i], h.msg_hdr.msg_namelen) };
        Some((addr.as_socket()?, &self.bufs[i][..len]))
    }
}

fn run(shared: &Shared, epoch: Instant) {
    // SAFETY: zeroed epoll_events are valid; the kernel fills them.
    let mut events: Vec<libc::epoll_event> = vec![unsafe { std::mem::zeroed() }; EVENTS_PER_WAIT];
    let mut ready: Vec<Arc<Entry>> = Vec::with_capacity(EVENTS_PER_WAIT);
    let mut batch = Batch::new();
    while !shared.stop.load(Ordering::Acquire) {
        // SAFETY: `events` has room for EVENTS_PER_WAIT entries.
        let n = unsafe {
            libc::epoll_wait(
                shared.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS_PER_WAIT as libc::c_int,
                -1,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("RTP receive thread stops: epoll_wait: {e}");
            return;
        }
        {
            let entries = lock(&shared.entries);
            for ev in &events[..n as usize] {
                let token = ev.u64;
                if token != WAKE_TOKEN {
                    if let Some(e) = entries.get(&token) {
                        ready.push(e.clone());
                    }
                }
            }
        }
        let woke = Instant::now();
        let now_ms = woke.duration_since(epoch).as_millis() as u64;
        for entry in ready.drain(..) {
            let got = batch.read(entry.socket.as_raw_fd());
            if got == 0 {
                continue;
            }
            if let Target::Rtp(leg) = &entry.target {
                let mut leg = lock(leg);
                for i in 0..got {
                    if let Some((from, packet)) = batch.packet(i) {
                        leg.receive(from, packet, now_ms);
                    }
                }
            }
        }
        if let Some(rest) = COALESCE.checked_sub(woke.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> Arc<UdpSocket> {
        Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind"))
    }

    #[test]
    fn a_discard_registration_drains_its_socket_and_leaves_on_drop() {
        let rx = Receiver::start(Instant::now(), 0).expect("start");
        let sock = socket();
        let addr = sock.local_addr().unwrap();
        let reg = rx.add_discard(sock.clone()).expect("register");
        assert_eq!(rx.len(), 1);
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..100 {
            peer.send_to(&[0u8; 200], addr).unwrap();
        }
        // Drained by the thread: nothing is left to read for us.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 1500];
        loop {
            std::thread::sleep(Duration::from_millis(20));
            match sock.recv_from(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                _ => assert!(Instant::now() < deadline, "the thread does not drain"),
            }
        }
        drop(reg);
        assert!(rx.is_empty());
        // No longer read: a packet stays queued.
        peer.send_to(b"x", addr).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let (n, _) = sock.recv_from(&mut buf).expect("still queued");
        assert_eq!(n, 1);
    }

    #[test]
    fn a_truncated_packet_is_not_delivered() {
        let mut batch = Batch::new();
        let sock = socket();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.send_to(&[7u8; PACKET_BUF + 100], sock.local_addr().unwrap())
            .unwrap();
        peer.send_to(&[1u8; 12], sock.local_addr().unwrap())
            .unwrap();
        sock.set_nonblocking(true).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let got = batch.read(sock.as_raw_fd());
        assert_eq!(got, 2);
        assert!(batch.packet(0).is_none(), "truncated");
        let (from, p) = batch.packet(1).expect("second");
        assert_eq!(from, peer.local_addr().unwrap());
        assert_eq!(p, &[1u8; 12]);
        assert_eq!(batch.read(sock.as_raw_fd()), 0, "nothing left");
    }

    /// Voluntary context switches of this process's thread named `name`.
    fn switches_of(name: &str) -> u64 {
        for task in std::fs::read_dir("/proc/self/task").expect("tasks") {
            let dir = task.expect("task").path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if comm.trim() == name {
                let status = std::fs::read_to_string(dir.join("status")).expect("status");
                return status
                    .lines()
                    .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("voluntary_ctxt_switches");
            }
        }
        panic!("no thread named {name}");
    }

    #[test]
    fn a_busy_receiver_takes_many_packets_per_wake() {
        let rx = Receiver::start(Instant::now(), 0).expect("start");
        let socks: Vec<_> = (0..20).map(|_| socket()).collect();
        let _regs: Vec<_> = socks
            .iter()
            .map(|s| rx.add_discard(s.clone()).expect("register"))
            .collect();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let before = switches_of("hotline-rtp-rx");
        let started = Instant::now();
        // 1,000 bursts of one packet to each socket, about 0.1 ms apart.
        for _ in 0..1000 {
            for s in &socks {
                peer.send_to(&[0u8; 172], s.local_addr().unwrap()).unwrap();
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let switches = switches_of("hotline-rtp-rx") - before;
        // At most a sleep and a wait per millisecond; waking per burst would be 1,000
        // or more in the 150-300 ms this takes on an idle machine.
        assert!(
            switches <= 2 * elapsed_ms + 100,
            "{switches} wakes in {elapsed_ms} ms for 1,000 bursts"
        );
        std::thread::sleep(Duration::from_millis(50));
        let mut buf = [0u8; 1500];
        for s in &socks {
            s.set_nonblocking(true).unwrap();
            assert!(
                matches!(s.recv_from(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
                "every packet was taken"
            );
        }
    }

    #[test]
    fn stopping_joins_the_thread() {
        let rx = Receiver::start(Instant::now(), 0).expect("start");
        let _reg = rx.add_discard(socket()).expect("register");
        drop(rx);
    }
}
