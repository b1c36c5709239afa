//! CPU time and memory: this process's own (getrusage) and the server's
//! (/proc/PID/stat, /proc/PID/status).

use std::time::Duration;

fn rusage(who: i32) -> libc::rusage {
    // SAFETY: valid `who` and out pointer.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut u) };
    u
}

fn tv(t: libc::timeval) -> Duration {
    Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000)
}

/// CPU time in user space and in the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    pub fn total(&self) -> Duration {
        self.user + self.system
    }

    pub fn since(&self, earlier: &CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// CPU time of this process (all threads).
pub fn own_cpu() -> CpuTime {
    let u = rusage(libc::RUSAGE_SELF);
    CpuTime {
        user: tv(u.ru_utime),
        system: tv(u.ru_stime),
    }
}

/// Peak resident set of this process, kB.
pub fn own_max_rss_kb() -> u64 {
    rusage(libc::RUSAGE_SELF).ru_maxrss as u64
}

/// A process's CPU time, from /proc/PID/stat (10 ms resolution).
pub fn process_cpu(pid: u32) -> Option<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, which may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let user: u64 = f.get(11)?.parse().ok()?;
    let system: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let time = |ticks: u64| Duration::from_nanos(ticks * 1_000_000_000 / hz);
    Some(CpuTime {
        user: time(user),
        system: time(system),
    })
}

/// A process's resident set, kB, from /proc/PID/status.
pub fn process_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_its_own_process() {
        use std::time::{Duration, Instant};
        let me = std::process::id();
        let (proc0, own0) = (super::process_cpu(me).unwrap(), super::own_cpu());
        // Burn 300 ms of CPU (wall time may be longer on a shared machine).
        let until = Instant::now() + Duration::from_secs(20);
        let mut x = 0u64;
        while super::own_cpu().since(&own0).total() < Duration::from_millis(300)
            && Instant::now() < until
        {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let (proc1, own1) = (super::process_cpu(me).unwrap(), super::own_cpu());
        let by_rusage = own1.since(&own0).total();
        assert!(by_rusage >= Duration::from_millis(300));
        // /proc counts in clock ticks (10 ms): the same time within a few ticks.
        let by_proc = proc1.since(&proc0).total();
        assert!(
            by_proc >= Duration::from_millis(250)
                && by_proc <= by_rusage + Duration::from_millis(50),
            "{by_proc:?} vs {by_rusage:?}"
        );
        assert!(super::process_rss_kb(me).unwrap() > 100);
    }
}
