//! Latency and throughput of request shapes, measured the same way against
//! tokend and against the baseline. The two are interleaved in rounds, so a
//! burst of load from another process on this shared machine hits both
//! rather than skewing their ratio.

use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Something that answers token requests: tokend through its client
/// library, or the baseline echo server through a bare socket.
pub trait Endpoint: Sync {
    type Conn;
    /// Connects and exchanges the hello.
    fn connect(&self) -> Result<Self::Conn, String>;
    /// One token request and its reply; `i` picks the credential.
    fn request(&self, conn: &mut Self::Conn, i: usize) -> Result<(), String>;
}

/// Median and 99th percentile of a set of samples, in microseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub samples: usize,
}

impl Latency {
    pub fn of(mut samples: Vec<Duration>) -> Latency {
        samples.sort_unstable();
        let at = |p: f64| {
            let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i].as_secs_f64() * 1e6
        };
        Latency {
            p50_us: at(0.50),
            p99_us: at(0.99),
            samples: samples.len(),
        }
    }
}

/// How each timed sample is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A request on a connection opened once.
    Persistent,
    /// Connect, hello and one request, each time.
    PerConnection,
}

/// Per-endpoint state across rounds: the persistent connection and a counter.
struct Runner<'a, E: Endpoint> {
    endpoint: &'a E,
    conn: Option<E::Conn>,
    next: usize,
    samples: Vec<Duration>,
}

impl<'a, E: Endpoint> Runner<'a, E> {
    fn new(endpoint: &'a E) -> Runner<'a, E> {
        Runner {
            endpoint,
            conn: None,
            next: 0,
            samples: Vec::new(),
        }
    }

    fn one(&mut self, shape: Shape) -> Result<Duration, String> {
        let i = self.next;
        self.next += 1;
        let start = Instant::now();
        match shape {
            Shape::Persistent => {
                if self.conn.is_none() {
                    self.conn = Some(self.endpoint.connect()?);
                }
                let conn = self.conn.as_mut().expect("connected above");
                self.endpoint.request(conn, i)?;
            }
            Shape::PerConnection => {
                let mut conn = self.endpoint.connect()?;
                self.endpoint.request(&mut conn, i)?;
            }
        }
        Ok(start.elapsed())
    }

    fn run(&mut self, shape: Shape, n: usize, keep: bool) -> Result<(), String> {
        for _ in 0..n {
            let took = self.one(shape)?;
            if keep {
                self.samples.push(took);
            }
        }
        Ok(())
    }
}

/// Latency of `shape` for both endpoints: a warm-up, then `iters` samples
/// each, taken in `rounds` alternating chunks.
pub fn latency_pair<A: Endpoint, B: Endpoint>(
    a: &A,
    b: &B,
    shape: Shape,
    iters: usize,
    rounds: usize,
) -> Result<(Latency, Latency), String> {
    let (mut ra, mut rb) = (Runner::new(a), Runner::new(b));
    let warm = (iters / 10).clamp(1, 1_000);
    ra.run(shape, warm, false)?;
    rb.run(shape, warm, false)?;
    let rounds = rounds.max(1);
    let chunk = iters.div_ceil(rounds);
    for _ in 0..rounds {
        ra.run(shape, chunk, true)?;
        rb.run(shape, chunk, true)?;
    }
    Ok((Latency::of(ra.samples), Latency::of(rb.samples)))
}

/// Requests per second with `clients` connections, one thread each, all
/// sending back to back for `duration`.
pub fn throughput<E: Endpoint>(e: &E, clients: usize, duration: Duration) -> Result<f64, String> {
    let barrier = Barrier::new(clients + 1);
    let (counts, elapsed) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let barrier = &barrier;
                s.spawn(move || client_loop(e, c, barrier, duration))
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let counts: Vec<_> = workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err("a client thread panicked".into()))
            })
            .collect();
        (counts, start.elapsed())
    });
    let mut total = 0u64;
    for count in counts {
        total += count?;
    }
    Ok(total as f64 / elapsed.as_secs_f64())
}

fn client_loop<E: Endpoint>(
    e: &E,
    c: usize,
    barrier: &Barrier,
    duration: Duration,
) -> Result<u64, String> {
    let conn = e.connect();
    barrier.wait();
    let mut conn = conn?;
    let deadline = Instant::now() + duration;
    let mut n = 0u64;
    // Spread clients over different credentials.
    let mut i = c * 7919;
    while Instant::now() < deadline {
        e.request(&mut conn, i)?;
        i += 1;
        n += 1;
    }
    Ok(n)
}

/// Throughput of both endpoints, in two alternating halves of `duration` each.
pub fn throughput_pair<A: Endpoint, B: Endpoint>(
    a: &A,
    b: &B,
    clients: usize,
    duration: Duration,
) -> Result<(f64, f64), String> {
    let half = duration / 2;
    let a1 = throughput(a, clients, half)?;
    let b1 = throughput(b, clients, half)?;
    let b2 = throughput(b, clients, half)?;
    let a2 = throughput(a, clients, half)?;
    Ok(((a1 + a2) / 2.0, (b1 + b2) / 2.0))
}
