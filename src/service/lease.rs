//! The GPU lease: questions take the model before the trainer's next step.
//!
//! The trainer holds the lease while an optimizer step runs and gives it up
//! at every step boundary; a question marks itself waiting, waits for the
//! step in flight to end, and generates while the trainer waits. Questions
//! never wait for a whole round, only for the step that was running.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Default)]
pub struct Lease {
    st: Mutex<State>,
    cv: Condvar,
}

#[derive(Default)]
struct State {
    /// Questions waiting for or holding the model.
    questions: usize,
    /// A training step is running.
    stepping: bool,
}

/// A question's hold on the model; dropping it lets the trainer continue.
pub struct QuestionLease<'a> {
    lease: &'a Lease,
}

impl Lease {
    fn state(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait for the step in flight (if any) to end, then hold the model.
    pub fn question(&self) -> QuestionLease<'_> {
        let mut st = self.state();
        st.questions += 1;
        while st.stepping {
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        QuestionLease { lease: self }
    }

    /// The trainer is at a step boundary: give the model up, and take it back
    /// for the next step when no question holds it. Returns false when a
    /// question still does after `wait` (the caller serves its queue and
    /// calls again).
    pub fn step_boundary(&self, wait: Duration) -> bool {
        let mut st = self.state();
        if st.stepping {
            st.stepping = false;
            self.cv.notify_all();
        }
        if st.questions > 0 {
            let (s, _) =
                self.cv.wait_timeout_while(st, wait, |s| s.questions > 0).unwrap_or_else(|p| p.into_inner());
            st = s;
            if st.questions > 0 {
                return false;
            }
        }
        st.stepping = true;
        true
    }

    /// The round is over (done, paused or failed).
    pub fn round_ended(&self) {
        let mut st = self.state();
        st.stepping = false;
        self.cv.notify_all();
    }

    /// Questions waiting for or holding the model.
    pub fn questions(&self) -> usize {
        self.state().questions
    }
}

impl Drop for QuestionLease<'_> {
    fn drop(&mut self) {
        let mut st = self.lease.state();
        st.questions = st.questions.saturating_sub(1);
        self.lease.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn question_waits_for_the_step_in_flight_then_trainer_waits_for_it() {
        let lease = Arc::new(Lease::default());
        assert!(lease.step_boundary(Duration::ZERO)); // the first step starts
        let l2 = lease.clone();
        let asked = Instant::now();
        let q = std::thread::spawn(move || {
            let _g = l2.question();
            let waited = asked.elapsed();
            std::thread::sleep(Duration::from_millis(100));
            waited
        });
        std::thread::sleep(Duration::from_millis(100)); // the step runs
                                                        // Boundary: the question takes the model; the trainer waits it out.
        let t = Instant::now();
        while !lease.step_boundary(Duration::from_millis(20)) {}
        let waited = q.join().unwrap();
        assert!(waited >= Duration::from_millis(90), "the question waited for the step: {waited:?}");
        assert!(t.elapsed() >= Duration::from_millis(90), "the trainer waited for the answer");
        lease.round_ended();
    }
}
