//! libp2p's timeouts on the tokio runtime's timer.
//!
//! libp2p and its helpers time their streams, requests and idle connections
//! with `futures_timer::Delay`, whose timers live on a helper thread of
//! their own: every new or reset timer wakes that thread, a futex call and
//! a context switch, several times per message. This crate stands in for
//! `futures-timer` (the workspace patches it in) with the same API on
//! `tokio::time`, so a timer is an entry in the runtime's wheel, set and
//! fired on the thread that polls it.
//!
//! A `Delay` polled outside a tokio runtime still fires, from a thread of
//! its own (nothing in Burrow does that; libp2p code that might must not
//! hang).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A future that completes at a point in time.
pub struct Delay {
    deadline: Instant,
    state: State,
}

enum State {
    /// Not polled since created or reset.
    Idle,
    /// Armed on the runtime's timer.
    Tokio(Pin<Box<tokio::time::Sleep>>),
    /// Armed on a thread, outside any runtime.
    Thread(Arc<Mutex<Fallback>>),
}

#[derive(Default)]
struct Fallback {
    fired: bool,
    waker: Option<Waker>,
}

impl Delay {
    /// A delay that completes `dur` from now.
    pub fn new(dur: Duration) -> Delay {
        Delay {
            deadline: deadline(dur),
            state: State::Idle,
        }
    }

    /// Restarts the delay: it completes `dur` from now.
    pub fn reset(&mut self, dur: Duration) {
        self.deadline = deadline(dur);
        match &mut self.state {
            State::Tokio(sleep) => sleep.as_mut().reset(self.deadline.into()),
            State::Idle | State::Thread(_) => self.state = State::Idle,
        }
    }
}

/// `now + dur`, or as far as `Instant` reaches.
fn deadline(dur: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(dur)
        .unwrap_or_else(|| now + Duration::from_secs(60 * 60 * 24 * 365 * 30))
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if let State::Idle = this.state {
            this.state = match tokio::runtime::Handle::try_current() {
                Ok(_) => State::Tokio(Box::pin(tokio::time::sleep_until(this.deadline.into()))),
                Err(_) => State::Thread(on_thread(this.deadline)),
            };
        }
        match &mut this.state {
            State::Tokio(sleep) => sleep.as_mut().poll(cx),
            State::Thread(shared) => {
                let mut shared = shared.lock().unwrap_or_else(|e| e.into_inner());
                if shared.fired {
                    Poll::Ready(())
                } else {
                    shared.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
            State::Idle => unreachable!("armed above"),
        }
    }
}

fn on_thread(deadline: Instant) -> Arc<Mutex<Fallback>> {
    let shared = Arc::new(Mutex::new(Fallback::default()));
    let fire = Arc::clone(&shared);
    std::thread::spawn(move || {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
        let waker = {
            let mut fire = fire.lock().unwrap_or_else(|e| e.into_inner());
            fire.fired = true;
            fire.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    });
    shared
}

impl std::fmt::Debug for Delay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delay")
            .field("deadline", &self.deadline)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::Delay;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn fires_on_the_runtime_timer_and_reset_moves_it() {
        let start = Instant::now();
        Delay::new(Duration::from_millis(20)).await;
        assert!(start.elapsed() >= Duration::from_millis(20));

        let start = Instant::now();
        let mut delay = Delay::new(Duration::from_millis(10));
        // Armed on the runtime by a first poll, then pushed out.
        assert!(!poll_once(&mut delay));
        delay.reset(Duration::from_millis(60));
        delay.await;
        assert!(start.elapsed() >= Duration::from_millis(60));
    }

    #[test]
    fn fires_outside_any_runtime() {
        let start = Instant::now();
        let delay = Delay::new(Duration::from_millis(30));
        block_on(delay);
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    /// Polls once with a no-op waker; true if ready.
    fn poll_once(delay: &mut Delay) -> bool {
        use std::future::Future;
        use std::task::{Context, Waker};
        let mut cx = Context::from_waker(Waker::noop());
        std::pin::Pin::new(delay).poll(&mut cx).is_ready()
    }

    /// A minimal executor: parks the thread until the future wakes it.
    fn block_on(mut delay: Delay) {
        use std::future::Future;
        use std::sync::Arc;
        use std::task::{Context, Wake};
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Arc::new(Unpark(std::thread::current())).into();
        let mut cx = Context::from_waker(&waker);
        while std::pin::Pin::new(&mut delay).poll(&mut cx).is_pending() {
            std::thread::park();
        }
    }
}
