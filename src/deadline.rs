//! An HTTP/1 connection's deadlines on one tokio timer: hyper's header read
//! timeout and, for the request in flight, its body read and upstream
//! response timeouts.
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
//! tokio's timers ([`timeout`] with no `Deadlines`).

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
}

impl Shared {
    /// `at` as nanoseconds after `origin`; never 0, which means none.
    fn nanos(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX).max(1)
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
            }),
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

    /// Wakes the connection's task when the deadline noted last is due;
    /// never resolves. `limit` is the header read timeout: the timer is
    /// re-armed when it fires and when a deadline earlier than the armed
    /// one is noted, and otherwise looks again a `limit` later. It is
    /// polled at every wake-up of the task, so it polls its tokio sleep
    /// only to register it and once it has fired.
    pub async fn watch(&self, limit: Duration) {
        let shared = &self.shared;
        let sleep = tokio::time::sleep(limit);
        tokio::pin!(sleep);
        // Where the sleep is armed, in `shared`'s nanoseconds: compared with
        // the noted deadline at every poll.
        let mut armed = shared.nanos(sleep.deadline().into_std());
        let mut registered = false;
        std::future::poll_fn(|cx| {
            loop {
                let noted = shared.noted();
                if noted != 0 && noted < armed {
                    armed = noted;
                    sleep.as_mut().reset(shared.instant(noted).into());
                    registered = false;
                }
                if registered && !sleep.is_elapsed() {
                    return Poll::Pending;
                }
                if sleep.as_mut().poll(cx).is_pending() {
                    registered = true;
                    return Poll::Pending;
                }
                // Fired: this wake-up lets a due deadline see it is due.
                // A later one is watched next; one already due is done with.
                let at = Instant::now();
                let now = shared.nanos(at);
                if noted != 0 && noted <= now {
                    shared.clear(noted);
                }
                armed = if noted > now {
                    noted
                } else {
                    shared.nanos(at + limit)
                };
                sleep.as_mut().reset(shared.instant(armed).into());
                registered = false;
            }
        })
        .await
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

/// `future`, or [`Elapsed`] once `after` has passed: on the connection's
/// timer when the request has one (HTTP/1), on tokio's otherwise. tokio's
/// timer is boxed, so an HTTP/1 request's future carries no room for it.
pub fn timeout<F: Future>(
    deadlines: Option<&Deadlines>,
    after: Duration,
    future: F,
) -> impl Future<Output = Result<F::Output, Elapsed>> + use<F> {
    match deadlines {
        Some(deadlines) => Either::Left(Timeout {
            future,
            due: deadlines.due_at(Instant::now() + after),
        }),
        None => Either::Right(
            Box::pin(tokio::time::timeout(after, future)).map(|r| r.map_err(|_| Elapsed)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    /// hyper's sleep and the watch polled by one task, as in a connection.
    async fn due_with_watch(deadlines: &Deadlines, limit: Duration, due: impl Future) {
        let watch = deadlines.watch(limit);
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
        let bounded = timeout(Some(&deadlines), Duration::from_secs(5), quick);
        let result = std::cell::Cell::new(None);
        due_with_watch(&deadlines, Duration::from_secs(10), async {
            result.set(Some(bounded.await));
        })
        .await;
        assert_eq!(result.get(), Some(Ok(())));
        // Without a connection timer it is tokio's.
        let tokio_bounded = timeout(
            None,
            Duration::from_millis(20),
            std::future::pending::<()>(),
        );
        assert_eq!(tokio_bounded.await, Err(Elapsed));
    }
}
