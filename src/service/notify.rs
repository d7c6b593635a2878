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

/// WATCHDOG_USEC, for this process. As libsystemd's sd_watchdog_enabled, an
/// absent WATCHDOG_PID means "this process" (sd-notify's own check insists on it).
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok().filter(|u| *u > 0)?;
    match std::env::var("WATCHDOG_PID").ok().map(|p| p.parse::<u32>()) {
        Some(Ok(pid)) if pid != std::process::id() => None,
        Some(Err(_)) => None,
        _ => Some(Duration::from_micros(usec)),
    }
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
        Self { every: watchdog_interval().map(|d| d / 2), last: Instant::now(), status: String::new() }
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
