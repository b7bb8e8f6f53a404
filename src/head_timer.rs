//! hyper's HTTP/1 header read timeout on one timer per connection.
//!
//! hyper starts a sleep from its `Timer` each time it waits for a request
//! head (after every response, on a kept-alive connection) and drops it once
//! the head is read: with tokio's timer, a timer-wheel insertion and removal
//! on every request. The [`HeadTimer`] given to a connection's hyper instead
//! hands out sleeps that only note their deadline; the connection's task keeps
//! one tokio timer ([`HeadTimer::watch`]) that wakes it when the latest
//! deadline is due, re-armed at most once per timeout. hyper polls its sleep
//! again on that wake-up, finds it due, and closes the connection as before.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The deadlines one connection's hyper asked for.
#[derive(Clone)]
pub struct HeadTimer {
    shared: Arc<Shared>,
}

struct Shared {
    /// Deadlines are kept as nanoseconds after this instant.
    origin: Instant,
    /// The latest deadline of a sleep hyper polled and found not yet due.
    latest: AtomicU64,
}

impl HeadTimer {
    /// A timer for one connection.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                origin: Instant::now(),
                latest: AtomicU64::new(0),
            }),
        }
    }

    /// Wakes the connection's task when the latest deadline hyper waits for
    /// is due; never resolves. `limit` is the header read timeout: no
    /// deadline hyper sets is further away, so between two of hyper's sleeps
    /// the timer runs at most once a `limit`.
    ///
    /// The task is woken several times a request; the timer is polled only
    /// to register it and once it has fired (polling it at every wake-up
    /// re-registered its waker each time).
    pub async fn watch(&self, limit: Duration) {
        let sleep = tokio::time::sleep(limit);
        tokio::pin!(sleep);
        let mut registered = false;
        std::future::poll_fn(|cx| {
            loop {
                if registered && !sleep.is_elapsed() {
                    return Poll::Pending;
                }
                if sleep.as_mut().poll(cx).is_pending() {
                    registered = true;
                    return Poll::Pending;
                }
                let now = Instant::now();
                let latest = self.shared.origin
                    + Duration::from_nanos(self.shared.latest.load(Ordering::Relaxed));
                // Due (this wake-up lets hyper see it) or no sleep pending (a
                // request is in flight): look again a `limit` later.
                let next = if latest > now { latest } else { now + limit };
                sleep.as_mut().reset(next.into());
                registered = false;
            }
        })
        .await
    }
}

impl Default for HeadTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadSleep {
            deadline,
            shared: self.shared.clone(),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<HeadSleep>() {
            Some(mut sleep) => sleep.deadline = new_deadline,
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// A sleep that is due once its deadline has passed; the connection's
/// [`HeadTimer::watch`] provides the wake-up.
struct HeadSleep {
    deadline: Instant,
    shared: Arc<Shared>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        let nanos = self
            .deadline
            .saturating_duration_since(self.shared.origin)
            .as_nanos();
        self.shared
            .latest
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
        Poll::Pending
    }
}

impl hyper::rt::Sleep for HeadSleep {}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;

    #[tokio::test]
    async fn a_sleep_is_due_when_the_watch_wakes_its_task() {
        let timer = HeadTimer::new();
        let limit = Duration::from_millis(200);
        let mut sleep = timer.sleep(limit);
        let waited = Instant::now();
        let watch = timer.watch(limit);
        tokio::pin!(watch);
        // hyper's sleep and the watch are polled by one task, as in a connection.
        let due = std::future::poll_fn(|cx| {
            let _ = watch.as_mut().poll(cx);
            sleep.as_mut().poll(cx)
        });
        tokio::time::timeout(Duration::from_secs(5), due)
            .await
            .expect("the watch wakes the task when the sleep is due");
        assert!(waited.elapsed() >= limit);
    }
}
