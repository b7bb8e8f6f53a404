//! A listener's shutdown as one signal its connections wait on: first
//! draining (finish what is in flight), then closing (drop what is left).
//!
//! Every connection's task waits on it beside its connection and polls the
//! wait at each wake-up, several times a request. A [`Wait`] registers its
//! task once; after that a poll is one atomic load while the task stays the
//! same. (A `tokio::sync::watch` wait takes its channel's lock at every
//! poll: about 1,300 instructions a request, bench/NOTES.md.)

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use slab::Slab;

/// How far the shutdown has gone; each phase implies the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Serving as usual.
    Serving = 0,
    /// New connections are refused; requests in flight finish.
    Draining = 1,
    /// What is still open is dropped.
    Closing = 2,
}

/// The signal, shared by a listener and its connections.
#[derive(Clone, Default)]
pub struct Shutdown {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    phase: AtomicU8,
    waiters: Mutex<Slab<Waker>>,
}

impl Shared {
    fn reached(&self, phase: Phase) -> bool {
        self.phase.load(Ordering::Acquire) >= phase as u8
    }

    fn waiters(&self) -> MutexGuard<'_, Slab<Waker>> {
        // A panic while holding the lock leaves the slab consistent.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Shutdown {
    /// A signal in [`Phase::Serving`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves on to `phase` (never back) and wakes every waiting task.
    pub fn enter(&self, phase: Phase) {
        self.shared.phase.fetch_max(phase as u8, Ordering::AcqRel);
        // Taken after the phase is stored: a wait that registers under this
        // lock either saw the new phase or is woken here.
        for (_, waker) in self.shared.waiters().iter() {
            waker.wake_by_ref();
        }
    }

    /// Resolves once the shutdown has reached `phase`.
    pub fn wait(&self, phase: Phase) -> Wait {
        Wait {
            shared: self.shared.clone(),
            phase,
            registered: None,
        }
    }
}

/// A task waiting for a [`Phase`]; see [`Shutdown::wait`].
pub struct Wait {
    shared: Arc<Shared>,
    phase: Phase,
    /// This wait's slot among the waiters, and the waker stored there.
    registered: Option<(usize, Waker)>,
}

impl Future for Wait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.reached(self.phase) {
            return Poll::Ready(());
        }
        if let Some((_, waker)) = &self.registered {
            if waker.will_wake(cx.waker()) {
                return Poll::Pending;
            }
        }
        let this = &mut *self;
        let mut waiters = this.shared.waiters();
        if this.shared.reached(this.phase) {
            return Poll::Ready(());
        }
        let waker = cx.waker().clone();
        match &mut this.registered {
            Some((key, stored)) => {
                waiters[*key] = waker.clone();
                *stored = waker;
            }
            None => {
                let key = waiters.insert(waker.clone());
                this.registered = Some((key, waker));
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some((key, _)) = self.registered.take() {
            self.shared.waiters().remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The spawned wait resolves soon (a stuck one fails the test with `what`).
    async fn woken(wait: &mut tokio::task::JoinHandle<()>, what: &str) {
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect(what)
            .unwrap();
    }

    #[tokio::test]
    async fn waits_resolve_at_their_phase_and_not_before() {
        let shutdown = Shutdown::new();
        let mut draining = tokio::spawn(shutdown.wait(Phase::Draining));
        let mut closing = tokio::spawn(shutdown.wait(Phase::Closing));
        let short = Duration::from_millis(50);
        assert!(tokio::time::timeout(short, &mut draining).await.is_err());
        shutdown.enter(Phase::Draining);
        woken(&mut draining, "draining wakes the draining wait").await;
        assert!(tokio::time::timeout(short, &mut closing).await.is_err());
        shutdown.enter(Phase::Closing);
        woken(&mut closing, "closing wakes the closing wait").await;
        // Late waits resolve at once; the phase never goes back.
        shutdown.enter(Phase::Draining);
        shutdown.wait(Phase::Closing).await;
        assert_eq!(shutdown.shared.waiters().len(), 0);
    }

    #[tokio::test]
    async fn a_dropped_wait_leaves_no_waker_behind() {
        let shutdown = Shutdown::new();
        let wait = tokio::spawn(shutdown.wait(Phase::Draining));
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(shutdown.shared.waiters().len(), 1);
        wait.abort();
        let _ = wait.await;
        assert_eq!(shutdown.shared.waiters().len(), 0);
    }
}
