//! A connection's deadlines on one tokio timer: the first request's, and on
//! HTTP/1 hyper's header read timeout and, for the request in flight, its
//! body read and upstream response timeouts.
//!
//! A tokio sleep per deadline is a timer-wheel insertion and removal: about
//! 1,100 instructions for each of a request's timeouts, and hyper starts a
//! header read sleep after every response (bench/NOTES.md). Here a deadline
//! only notes when it is due ([`Due`]); the connection's task keeps one
//! tokio timer ([`Deadlines::watch`]) that wakes it when the noted deadline
//! is due. An HTTP/1 connection serves one request at a time, so the
//! deadline noted last is the pending one: hyper's header read sleep between
//! requests, the request's timeouts while it is in flight. Both are polled
//! by the connection's task (hyper polls the request's future there), which
//! the watch wakes. HTTP/2 requests run in tasks of their own and keep
//! tokio's timers ([`timeout`] with no `Deadlines`); an HTTP/2 connection's
//! watch only keeps the first request's deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::Either;
use pin_project_lite::pin_project;

/// A connection's deadlines (cheap to clone: one shared cell).
#[derive(Clone)]
pub struct Deadlines {
    shared: Arc<Shared>,
}

struct Shared {
    /// Deadlines are kept as nanoseconds after this instant.
    origin: Instant,
    /// The deadline a pending [`Due`] noted last; 0 for none.
    noted: AtomicU64,
    /// The first request's deadline until a request comes; 0 after.
    first: AtomicU64,
}

impl Shared {
    /// `at` as nanoseconds after `origin`; never 0, which means none.
    fn nanos(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(nanos)
            .unwrap_or(u64::MAX - 1)
            .clamp(1, u64::MAX - 1)
    }

    fn instant(&self, nanos: u64) -> Instant {
        self.origin + Duration::from_nanos(nanos)
    }

    /// The deadline noted last (nanoseconds), 0 for none.
    fn noted(&self) -> u64 {
        self.noted.load(Ordering::Relaxed)
    }

    /// Forgets `nanos` unless a later note replaced it.
    fn clear(&self, nanos: u64) {
        let _ = self
            .noted
            .compare_exchange(nanos, 0, Ordering::Relaxed, Ordering::Relaxed);
    }
}

impl Deadlines {
    /// The deadlines of one connection.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                origin: Instant::now(),
                noted: AtomicU64::new(0),
                first: AtomicU64::new(0),
            }),
        }
    }

    /// The deadlines of a connection that closes unless a request comes by
    /// `at` (see [`Watch`] and [`Deadlines::requested`]).
    pub fn with_first_request_by(at: Instant) -> Self {
        let deadlines = Self::new();
        let first = deadlines.shared.nanos(at);
        deadlines.shared.first.store(first, Ordering::Relaxed);
        deadlines
    }

    /// A request came: the first request's deadline no longer applies.
    /// Called for every request, so it only writes the first time.
    pub fn requested(&self) {
        if self.shared.first.load(Ordering::Relaxed) != 0 {
            self.shared.first.store(0, Ordering::Relaxed);
        }
    }

    /// Due at `at`.
    pub fn due_at(&self, at: Instant) -> Due {
        Due {
            at,
            nanos: self.shared.nanos(at),
            shared: self.shared.clone(),
        }
    }

    /// The connection's one tokio timer, polled by its task at every
    /// wake-up (see [`Watch`]). `limit` is the header read timeout, with
    /// which the watch looks again when nothing is noted; `None` where no
    /// request notes its deadlines here (HTTP/2), and the watch then stops
    /// once the first request has come.
    pub fn watch(&self, limit: Option<Duration>) -> Watch {
        let shared = &self.shared;
        let armed = match shared.first.load(Ordering::Relaxed) {
            0 => limit.map_or(PARKED, |limit| shared.nanos(Instant::now() + limit)),
            first => first,
        };
        let at = match armed {
            PARKED => Instant::now(),
            armed => shared.instant(armed),
        };
        Watch {
            sleep: tokio::time::sleep_until(at.into()),
            shared: shared.clone(),
            armed,
            limit,
            registered: false,
        }
    }
}

/// A [`Watch`] with nothing to wake its task for.
const PARKED: u64 = u64::MAX;

pin_project! {
    /// Wakes a connection's task when the deadline noted last is due, and
    /// resolves if no request came by the first request's deadline; it
    /// never resolves otherwise. The timer is re-armed when it fires and
    /// when a deadline earlier than the armed one is noted, and otherwise
    /// looks again a `limit` later. It is polled at every wake-up of the
    /// task, so it polls its tokio sleep only to register it and once it
    /// has fired. A plain struct rather than an `async fn`, so the
    /// connection's task holds it without a state of its own.
    pub struct Watch {
        #[pin]
        sleep: tokio::time::Sleep,
        shared: Arc<Shared>,
        // Where the sleep is armed, in `shared`'s nanoseconds ([`PARKED`]
        // for nowhere): compared with the noted deadline at every poll.
        armed: u64,
        limit: Option<Duration>,
        registered: bool,
    }
}

impl Future for Watch {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        let shared = &**this.shared;
        loop {
            let noted = shared.noted();
            if noted != 0 && noted < *this.armed {
                *this.armed = noted;
                this.sleep.as_mut().reset(shared.instant(noted).into());
                *this.registered = false;
            }
            if *this.armed == PARKED || (*this.registered && !this.sleep.is_elapsed()) {
                return Poll::Pending;
            }
            if this.sleep.as_mut().poll(cx).is_pending() {
                *this.registered = true;
                return Poll::Pending;
            }
            // Fired: this wake-up lets a due deadline see it is due. A later
            // one is watched next; one already due is done with.
            let at = Instant::now();
            let now = shared.nanos(at);
            let first = shared.first.load(Ordering::Relaxed);
            if first != 0 && first <= now {
                return Poll::Ready(());
            }
            if noted != 0 && noted <= now {
                shared.clear(noted);
            }
            let next = [noted, first].into_iter().filter(|&n| n > now).min();
            *this.armed = match (next, *this.limit) {
                (Some(next), _) => next,
                (None, Some(limit)) => shared.nanos(at + limit),
                (None, None) => PARKED,
            };
            if *this.armed != PARKED {
                this.sleep
                    .as_mut()
                    .reset(shared.instant(*this.armed).into());
            }
            *this.registered = false;
        }
    }
}

impl Default for Deadlines {
    fn default() -> Self {
        Self::new()
    }
}

/// A deadline on a connection's timer: ready once due. While pending it
/// notes its instant, so the connection's watch wakes the task for it.
pub struct Due {
    at: Instant,
    /// `at` in the shared cell's nanoseconds.
    nanos: u64,
    shared: Arc<Shared>,
}

impl Due {
    /// Moves the deadline (hyper resets its header read sleep).
    fn reset(&mut self, at: Instant) {
        self.at = at;
        self.nanos = self.shared.nanos(at);
    }
}

impl Future for Due {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            return Poll::Ready(());
        }
        self.shared.noted.store(self.nanos, Ordering::Relaxed);
        Poll::Pending
    }
}

/// hyper's header read timeout runs on the connection's deadlines.
impl hyper::rt::Timer for Deadlines {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.due_at(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<Due>() {
            Some(due) => due.get_mut().reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

impl hyper::rt::Sleep for Due {}

/// A future past its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

pin_project! {
    /// A future bounded by a deadline on its connection's timer.
    pub struct Timeout<F> {
        #[pin]
        future: F,
        due: Due,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match Pin::new(this.due).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `future`, or [`Elapsed`] once `after` has passed since `from`: on the
/// connection's timer when the request has one (HTTP/1), on tokio's
/// otherwise. tokio's timer is boxed, so an HTTP/1 request's future carries
/// no room for it. `from` is the caller's: a request path that has just
/// read the clock does not read it again.
pub fn timeout<F: Future>(
    deadlines: Option<&Deadlines>,
    from: Instant,
    after: Duration,
    future: F,
) -> impl Future<Output = Result<F::Output, Elapsed>> + use<F> {
    match deadlines {
        Some(deadlines) => Either::Left(Timeout {
            future,
            due: deadlines.due_at(from + after),
        }),
        None => Either::Right(
            Box::pin(tokio::time::timeout_at((from + after).into(), future))
                .map(|r| r.map_err(|_| Elapsed)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    /// hyper's sleep and the watch polled by one task, as in a connection.
    async fn due_with_watch(deadlines: &Deadlines, limit: Duration, due: impl Future) {
        let watch = deadlines.watch(Some(limit));
        tokio::pin!(watch);
        tokio::pin!(due);
        let both = std::future::poll_fn(|cx| {
            let ready = due.as_mut().poll(cx);
            let _ = watch.as_mut().poll(cx);
            ready
        });
        tokio::time::timeout(Duration::from_secs(5), both)
            .await
            .expect("the watch wakes the task when the deadline is due");
    }

    #[tokio::test]
    async fn a_sleep_is_due_when_the_watch_wakes_its_task() {
        let deadlines = Deadlines::new();
        let limit = Duration::from_millis(200);
        let sleep = deadlines.sleep(limit);
        let waited = Instant::now();
        due_with_watch(&deadlines, limit, sleep).await;
        assert!(waited.elapsed() >= limit);
    }

    #[tokio::test]
    async fn a_deadline_earlier_than_the_armed_timer_is_not_late() {
        let deadlines = Deadlines::new();
        // The watch looks every 10 s; a 100 ms deadline must not wait for that.
        let limit = Duration::from_secs(10);
        let waited = Instant::now();
        let bounded = timeout(
            Some(&deadlines),
            waited,
            Duration::from_millis(100),
            std::future::pending::<()>(),
        );
        let result = std::cell::Cell::new(None);
        due_with_watch(&deadlines, limit, async {
            result.set(Some(bounded.await));
        })
        .await;
        assert_eq!(result.get(), Some(Err(Elapsed)));
        let took = waited.elapsed();
        assert!(took >= Duration::from_millis(100), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test]
    async fn a_future_done_in_time_is_not_cut_short() {
        let deadlines = Deadlines::new();
        let quick = tokio::time::sleep(Duration::from_millis(20));
        let bounded = timeout(
            Some(&deadlines),
            Instant::now(),
            Duration::from_secs(5),
            quick,
        );
        let result = std::cell::Cell::new(None);
        due_with_watch(&deadlines, Duration::from_secs(10), async {
            result.set(Some(bounded.await));
        })
        .await;
        assert_eq!(result.get(), Some(Ok(())));
        // Without a connection timer it is tokio's.
        let tokio_bounded = timeout(
            None,
            Instant::now(),
            Duration::from_millis(20),
            std::future::pending::<()>(),
        );
        assert_eq!(tokio_bounded.await, Err(Elapsed));
    }

    /// Polls `watch` until it resolves or `within` has passed.
    async fn resolves_within(watch: Watch, within: Duration) -> bool {
        tokio::time::timeout(within, watch).await.is_ok()
    }

    #[tokio::test]
    async fn no_request_by_the_first_deadline_resolves_the_watch() {
        let first = Duration::from_millis(100);
        let waited = Instant::now();
        let deadlines = Deadlines::with_first_request_by(waited + first);
        // The header read timeout would look again only after 10 s.
        let watch = deadlines.watch(Some(Duration::from_secs(10)));
        assert!(resolves_within(watch, Duration::from_secs(5)).await);
        let took = waited.elapsed();
        assert!(took >= first, "{took:?}");
        // HTTP/2: no limit, the same first deadline.
        let deadlines = Deadlines::with_first_request_by(Instant::now() + first);
        assert!(resolves_within(deadlines.watch(None), Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn a_request_lifts_the_first_deadline() {
        let first = Duration::from_millis(50);
        for limit in [Some(Duration::from_millis(20)), None] {
            let deadlines = Deadlines::with_first_request_by(Instant::now() + first);
            let watch = deadlines.watch(limit);
            deadlines.requested();
            // Past the first deadline, and (HTTP/1) several re-armed looks.
            assert!(!resolves_within(watch, first * 4).await, "{limit:?}");
        }
    }
}
