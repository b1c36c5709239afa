//! Reference code allocation as the book fills: microseconds per code at several
//! fill levels (random probes, then a scan once the book is nearly full), and the
//! start-up cost of building the book from every code a database can hold.
//! Run with `bench/references.sh`.

use hotline::reference::{code_for, ReferenceBook, CODE_SPACE};
use rand::SeedableRng;
use std::time::Instant;

fn main() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let stored: Vec<String> = (0..CODE_SPACE).map(code_for).collect();
    let started = Instant::now();
    let book = ReferenceBook::from_stored(stored.iter().map(String::as_str));
    println!(
        "book from {} stored codes: {:.1} ms",
        book.used(),
        started.elapsed().as_secs_f64() * 1e3
    );
    let mut book = ReferenceBook::default();
    let mut json = Vec::new();
    for fill in [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999] {
        let target = (fill * f64::from(CODE_SPACE)) as u32;
        while book.used() < target {
            book.allocate(&mut rng).expect("codes left");
        }
        let n = 1000.min((CODE_SPACE - book.used()) / 2).max(1);
        let t = Instant::now();
        for _ in 0..n {
            book.allocate(&mut rng).expect("codes left");
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        println!(
            "{:>7.2} % full: {us:8.2} us per code ({n} codes)",
            fill * 100.0
        );
        json.push(format!("{{\"fill\":{fill},\"us_per_code\":{us:.3}}}"));
    }
    while book.allocate(&mut rng).is_some() {}
    println!(
        "full after {} codes; the next allocation gives none",
        book.used()
    );
    println!(
        "{{\"bench\":\"references\",\"levels\":[{}]}}",
        json.join(",")
    );
}
