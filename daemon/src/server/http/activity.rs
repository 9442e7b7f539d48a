//! What an HTTP connection is doing, so that it can be held to three
//! deadlines hyper does not enforce the way we need: the request head must
//! arrive within `limits.frame_timeout_secs` of its first byte, a
//! kept-alive connection with no request for `limits.idle_timeout_secs` is
//! closed, and so is one whose client stops reading its answer for as long
//! (a streamed download or scrape would otherwise hold its buffers and its
//! place for ever). (hyper's own `header_read_timeout` starts at the end
//! of the previous response, so it would close idle kept-alive connections
//! after a few seconds.)

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests, since this instant.
    Idle(Instant),
    /// The first bytes of a request head arrived at this instant.
    Head(Instant),
    /// A request is being answered (its body read, the handler run, its
    /// answer written); since when the client has not taken any of the
    /// answer waiting to be written, if it has not.
    Busy { stalled: Option<Instant> },
    /// A long-lived answer (`GET /v1/events`) is streaming; its peer last
    /// took bytes at this instant. A peer that stops reading is cut off
    /// [`STALLED`] later, whatever the idle deadline says. Where the OS
    /// tells how much of what was written the peer has not read
    /// (`queued`, Linux: [`OutQueue`]), only that draining counts as
    /// taking bytes: the kernel accepts writes into the socket's buffer
    /// from a peer that reads nothing, and heartbeats would fill it for
    /// days.
    Streaming(Instant, Option<usize>),
}

/// A connection's stream that can tell how many bytes written to it its
/// peer has not read yet.
pub trait OutQueue {
    /// `None` where the OS does not tell (off Linux, or an error).
    fn out_queue(&self) -> Option<usize>;
}

/// The bytes of the socket `fd` not yet read by its peer (Unix socket)
/// or not yet acknowledged (TCP): SIOCOUTQ, the same number as TIOCOUTQ.
#[cfg(target_os = "linux")]
fn unsent(fd: std::os::fd::BorrowedFd<'_>) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: `fd` is a socket borrowed for the call; TIOCOUTQ writes one
    // c_int to the pointer given.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    (rc == 0).then(|| usize::try_from(n).ok()).flatten()
}

impl OutQueue for interprocess::local_socket::tokio::Stream {
    fn out_queue(&self) -> Option<usize> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsFd;
            let interprocess::local_socket::tokio::Stream::UdSocket(s) = self;
            unsent(s.as_fd())
        }
        #[cfg(not(target_os = "linux"))]
        None
    }
}

impl OutQueue for tokio::net::TcpStream {
    fn out_queue(&self) -> Option<usize> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsFd;
            unsent(self.as_fd())
        }
        #[cfg(not(target_os = "linux"))]
        None
    }
}

/// How long a streaming answer may go without its peer taking a byte: the
/// stream sends a heartbeat every 15 s, so three missed heartbeats.
pub const STALLED: Duration = Duration::from_secs(45);

/// The phase of one connection, shared by its reader, its service and its
/// watchdog. A `std::sync::Mutex`: each section is a few assignments.
#[derive(Debug)]
pub struct Activity {
    phase: Mutex<Phase>,
    /// Woken when a head starts, so the watchdog arms the head deadline
    /// (until then it sleeps toward the much later idle deadline).
    head_started: Notify,
    /// Woken when an answer starts streaming, so that a stop that came
    /// while it was being built (before it was known to stream) ends it.
    stream_started: Notify,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            phase: Mutex::new(Phase::Idle(Instant::now())),
            head_started: Notify::new(),
            stream_started: Notify::new(),
        })
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes arrived: between requests, they start a head (and its deadline).
    fn bytes_arrived(&self) {
        let mut phase = self.phase();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Head(Instant::now());
            self.head_started.notify_one();
        }
    }

    /// Completes when a request head has started since the last call.
    pub async fn head_started(&self) {
        self.head_started.notified().await
    }

    /// A whole head arrived; the request is being answered. The returned
    /// guard marks the connection idle again when the answer is done (or
    /// abandoned).
    pub fn busy(self: &Arc<Self>) -> BusyGuard {
        *self.phase() = Phase::Busy { stalled: None };
        BusyGuard(self.clone())
    }

    /// The answer in progress streams for as long as its peer reads
    /// (see [`Phase::Streaming`]).
    pub fn streaming(&self) {
        let mut phase = self.phase();
        if let Phase::Busy { .. } = *phase {
            *phase = Phase::Streaming(Instant::now(), None);
            self.stream_started.notify_one();
        }
    }

    /// Completes when an answer started streaming since the last call.
    pub async fn stream_started(&self) {
        self.stream_started.notified().await
    }

    pub fn is_streaming(&self) -> bool {
        matches!(*self.phase(), Phase::Streaming(..))
    }

    /// A stream's peer has `unsent` bytes not yet read: it took some if
    /// that is none, or fewer than at the last measure.
    pub fn measured(&self, unsent: usize) {
        if let Phase::Streaming(last, queued) = &mut *self.phase() {
            if unsent == 0 || queued.is_some_and(|q| unsent < q) {
                *last = Instant::now();
            }
            *queued = Some(unsent);
        }
    }

    /// A write found the client's socket full, or the client took bytes:
    /// an answer's stall starts or ends, a stream's deadline moves on.
    fn write_blocked(&self, blocked: bool) {
        match &mut *self.phase() {
            Phase::Busy { stalled } => match (blocked, *stalled) {
                (true, None) => *stalled = Some(Instant::now()),
                (false, Some(_)) => *stalled = None,
                _ => {}
            },
            // Measured ([`Activity::measured`]): a write the kernel took
            // says nothing of the peer.
            Phase::Streaming(last, None) if !blocked => *last = Instant::now(),
            _ => {}
        }
    }

    /// When the connection must be closed if nothing changes, and why;
    /// `None` while a request is being answered and its client reads.
    pub fn deadline(&self, head: Duration, idle: Duration) -> Option<(Instant, &'static str)> {
        match *self.phase() {
            Phase::Idle(since) => Some((since + idle, "idle connection closed")),
            Phase::Head(since) => Some((since + head, "request head not received in time; closed")),
            Phase::Busy { stalled: None } => None,
            Phase::Busy {
                stalled: Some(since),
            } => Some((
                since + idle,
                "the client stopped reading its answer; closed",
            )),
            Phase::Streaming(since, _) => Some((
                since + STALLED,
                "the client stopped reading its event stream; closed",
            )),
        }
    }
}

/// Marks the connection idle when dropped (see [`Activity::busy`]).
pub struct BusyGuard(Arc<Activity>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        *self.0.phase() = Phase::Idle(Instant::now());
    }
}

/// The connection's stream, reporting arriving bytes to its [`Activity`].
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Watched<S> {
        Watched { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() > before
        {
            self.activity.bytes_arrived();
        }
        polled
    }
}

impl<S: OutQueue> Watched<S> {
    /// Before each write of a stream (its heartbeats, every 15 s, at
    /// least): what its peer has not read of the earlier ones.
    fn measure(&self) {
        if self.activity.is_streaming()
            && let Some(unsent) = self.inner.out_queue()
        {
            self.activity.measured(unsent);
        }
    }
}

impl<S: AsyncWrite + OutQueue + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.measure();
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        match &polled {
            Poll::Pending => self.activity.write_blocked(true),
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.write_blocked(false),
            _ => {}
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.measure();
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        match &polled {
            Poll::Pending => self.activity.write_blocked(true),
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.write_blocked(false),
            _ => {}
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: Duration = Duration::from_secs(5);
    const IDLE: Duration = Duration::from_secs(300);

    #[test]
    fn a_started_head_has_the_short_deadline_and_an_answer_has_none() {
        let activity = Activity::new();
        let (idle, _) = activity.deadline(HEAD, IDLE).unwrap();
        activity.bytes_arrived();
        let (head, why) = activity.deadline(HEAD, IDLE).unwrap();
        assert!(head < idle, "{why}");
        let busy = activity.busy();
        assert_eq!(activity.deadline(HEAD, IDLE), None);
        activity.bytes_arrived();
        assert_eq!(
            activity.deadline(HEAD, IDLE),
            None,
            "body bytes are not a head"
        );
        drop(busy);
        let (_, why) = activity.deadline(HEAD, IDLE).unwrap();
        assert_eq!(why, "idle connection closed");
    }

    #[test]
    fn an_answer_its_client_stops_reading_gets_the_idle_deadline() {
        let activity = Activity::new();
        let _busy = activity.busy();
        activity.write_blocked(false);
        assert_eq!(activity.deadline(HEAD, IDLE), None, "writes go through");
        activity.write_blocked(true);
        let (first, why) = activity.deadline(HEAD, IDLE).unwrap();
        assert_eq!(why, "the client stopped reading its answer; closed");
        activity.write_blocked(true);
        assert_eq!(
            activity.deadline(HEAD, IDLE).unwrap().0,
            first,
            "the stall counts from its start"
        );
        activity.write_blocked(false);
        assert_eq!(activity.deadline(HEAD, IDLE), None, "the client read");
    }

    /// An event stream is not closed for being idle (it answers a request
    /// for as long as it lasts), but it is when its peer stops reading.
    #[test]
    fn a_stream_whose_peer_stops_reading_has_a_deadline_that_sending_moves() {
        let activity = Activity::new();
        let busy = activity.busy();
        activity.streaming();
        assert!(activity.is_streaming());
        let (first, why) = activity.deadline(HEAD, IDLE).unwrap();
        assert!(why.contains("stopped reading"), "{why}");
        assert!(first <= Instant::now() + STALLED);
        std::thread::sleep(Duration::from_millis(5));
        activity.write_blocked(false);
        let (later, _) = activity.deadline(HEAD, IDLE).unwrap();
        assert!(later > first, "a byte taken moves the deadline");
        drop(busy);
        assert!(!activity.is_streaming());
    }

    /// A peer that reads nothing while the kernel still takes writes (its
    /// buffer not full) is cut off: where the unsent bytes are measured,
    /// only their draining moves the deadline.
    #[test]
    fn a_measured_stream_moves_on_only_when_its_peer_reads() {
        let activity = Activity::new();
        let _busy = activity.busy();
        activity.streaming();
        let (first, _) = activity.deadline(HEAD, IDLE).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        activity.measured(13);
        activity.write_blocked(false);
        activity.measured(26);
        assert_eq!(
            activity.deadline(HEAD, IDLE).unwrap().0,
            first,
            "writes taken into a growing queue are not reading"
        );
        activity.measured(13);
        let (later, _) = activity.deadline(HEAD, IDLE).unwrap();
        assert!(later > first, "the queue drained some");
        std::thread::sleep(Duration::from_millis(5));
        activity.measured(0);
        assert!(activity.deadline(HEAD, IDLE).unwrap().0 > later, "all read");
    }

    /// A stop that comes while a stream's answer is being built finds no
    /// stream; the connection learns of the stream when it starts (the
    /// wake-up is kept for a listener that comes after it).
    #[tokio::test]
    async fn a_stream_that_starts_is_told_even_to_a_late_listener() {
        let activity = Activity::new();
        let _busy = activity.busy();
        activity.streaming();
        tokio::time::timeout(Duration::from_secs(1), activity.stream_started())
            .await
            .expect("the start of the stream is told");
        assert!(activity.is_streaming());
    }
}
