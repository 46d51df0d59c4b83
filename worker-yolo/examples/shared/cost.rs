//! What the cost examples share: this process' CPU time, a busy thread that stands for a
//! decoder, medians.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// This process' user + system CPU time, seconds (`/proc/self/stat`, clock ticks of 1/100 s).
pub fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime")) / 100.0
}

/// Busy threads, one per `n`, that stand for the decoders.
pub struct Busy {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Busy {
    pub fn start(n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let threads = (0..n)
            .map(|_| {
                let (s, d) = (stop.clone(), done.clone());
                std::thread::spawn(move || busy_work(s, d))
            })
            .collect();
        Self { stop, done, threads }
    }

    /// Stops the threads; returns the work units they got done.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("busy thread");
        }
        self.done.load(Ordering::Relaxed)
    }
}

/// Stands for a decoder: counts the work it gets done, i.e. what the model leaves to the rest
/// of the machine.
fn busy_work(stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let mut x = 1u64;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..100_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    std::hint::black_box(x);
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
