//! Percentiles of microsecond samples, reported in milliseconds.

use serde::Serialize;

/// A distribution: count, p50, p99, p99.9 and max, in ms.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Dist {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

/// Nearest-rank percentile of sorted samples.
fn rank(sorted: &[u32], q: f64) -> u32 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

impl Dist {
    /// Sorts `us` in place.
    pub fn of_us(us: &mut [u32]) -> Dist {
        if us.is_empty() {
            return Dist::default();
        }
        us.sort_unstable();
        let ms = |v: u32| f64::from(v) / 1000.0;
        Dist {
            n: us.len(),
            p50: ms(rank(us, 0.50)),
            p99: ms(rank(us, 0.99)),
            p99_9: ms(rank(us, 0.999)),
            max: ms(*us.last().unwrap_or(&0)),
        }
    }

    pub fn line(&self) -> String {
        if self.n == 0 {
            return "no samples".to_string();
        }
        format!(
            "p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3} ms  (n={})",
            self.p50, self.p99, self.p99_9, self.max, self.n
        )
    }
}

/// How one per-stream figure spreads over the streams: the median stream and the
/// worst one.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub worst: f64,
}

impl Spread {
    pub fn of(mut v: Vec<f64>) -> Spread {
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(f64::total_cmp);
        Spread {
            median: v[(v.len() - 1) / 2],
            worst: v[v.len() - 1],
        }
    }
}

/// Per-stream p50, p99, p99.9 and max, each spread over the streams.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct PerStream {
    pub streams: usize,
    pub p50: Spread,
    pub p99: Spread,
    pub p99_9: Spread,
    pub max: Spread,
}

impl PerStream {
    pub fn of(dists: &[Dist]) -> PerStream {
        let d: Vec<&Dist> = dists.iter().filter(|d| d.n > 0).collect();
        let pick = |f: fn(&Dist) -> f64| Spread::of(d.iter().map(|x| f(x)).collect());
        PerStream {
            streams: d.len(),
            p50: pick(|x| x.p50),
            p99: pick(|x| x.p99),
            p99_9: pick(|x| x.p99_9),
            max: pick(|x| x.max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u32> = (1..=1000).rev().map(|x| x * 1000).collect();
        let d = Dist::of_us(&mut v);
        assert_eq!(
            (d.n, d.p50, d.p99, d.p99_9, d.max),
            (1000, 500.0, 990.0, 999.0, 1000.0)
        );
        assert_eq!(Dist::of_us(&mut []), Dist::default());
        let s = Spread::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.worst), (2.0, 3.0));
    }
}
