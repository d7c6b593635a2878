//! systemd notifications (sd-notify): READY, WATCHDOG, STATUS, STOPPING.
//! Without NOTIFY_SOCKET (run by hand) every call is a no-op.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The watchdog and STATUS= as the loop sees them: pings at half the
/// interval systemd asked for, status lines only when they change.
pub struct Heartbeat {
    every: Option<Duration>,
    last: Instant,
    status: String,
}

impl Heartbeat {
    pub fn new() -> Self {
        let mut usec = 0u64;
        let every = sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2));
        Self { every, last: Instant::now(), status: String::new() }
    }

    /// Call from the loop that would hang: pings when due.
    pub fn beat(&mut self) {
        if let Some(every) = self.every {
            if self.last.elapsed() >= every {
                self.last = Instant::now();
                send(&[NotifyState::Watchdog]);
            }
        }
    }

    pub fn status(&mut self, line: &str) {
        if line != self.status {
            self.status = line.to_string();
            send(&[NotifyState::Status(line)]);
        }
    }
}
