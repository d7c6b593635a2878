//! When a round must stop early: SIGTERM/SIGINT (a stop flag the loop checks
//! between optimizer steps), `--max-minutes`, and the end of the nightly
//! window. [`window_deadline`] is shared with the service's scheduler.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::Config;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

/// Install SIGTERM and SIGINT handlers that raise the returned flag. Each
/// handler fires once (SA_RESETHAND): a second signal takes the default
/// action, so an operator can still kill a stuck process with a second Ctrl-C.
pub fn install_stop_signals() -> std::io::Result<&'static AtomicBool> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is a valid starting value; the handler
        // only performs an atomic store.
        let rc = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_stop_signal as *const () as usize;
            act.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(&STOP)
}

/// Local wall-clock time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    pub secs_of_day: u32,
}

impl LocalTime {
    pub fn hms(h: u32, m: u32, s: u32) -> Self {
        Self { secs_of_day: (h * 3600 + m * 60 + s) % 86_400 }
    }

    /// The current local time (the system time zone, via localtime_r).
    pub fn now() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as libc::time_t)
            .unwrap_or(0);
        // SAFETY: localtime_r writes into the tm we own; null means failure.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
        if !ok {
            return Self { secs_of_day: (t.rem_euclid(86_400)) as u32 };
        }
        Self::hms(tm.tm_hour as u32, tm.tm_min as u32, tm.tm_sec as u32)
    }
}

/// Time left in the nightly window (`[schedule] window_start..window_end`,
/// which may cross midnight), or `None` when `now_local` is outside it.
/// Equal start and end mean a window that never closes (24 h from now).
pub fn window_deadline(now_local: LocalTime, cfg: &Config) -> Option<Duration> {
    let (start, end) = cfg.window_minutes();
    let (start, end) = (start * 60, end * 60);
    let now = now_local.secs_of_day;
    if start == end {
        return Some(Duration::from_secs(86_400));
    }
    let inside = if start < end { now >= start && now < end } else { now >= start || now < end };
    if !inside {
        return None;
    }
    let left = if now < end { end - now } else { 86_400 - now + end };
    Some(Duration::from_secs(left as u64))
}

/// Why a round stopped before its last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Signal,
    Deadline,
}

/// The stop conditions a running round checks at every step boundary.
#[derive(Debug, Clone, Copy)]
pub struct StopWhen<'a> {
    pub flag: Option<&'a AtomicBool>,
    pub deadline: Option<Instant>,
}

impl StopWhen<'_> {
    pub fn never() -> StopWhen<'static> {
        StopWhen { flag: None, deadline: None }
    }

    pub fn check(&self) -> Option<StopReason> {
        if self.flag.is_some_and(|f| f.load(Ordering::SeqCst)) {
            return Some(StopReason::Signal);
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(StopReason::Deadline);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(start: &str, end: &str) -> Config {
        let text = format!("[schedule]\nwindow_start = \"{start}\"\nwindow_end = \"{end}\"\n");
        Config::from_layers(Some(("t.toml", &text))).unwrap()
    }

    #[test]
    fn window_across_midnight() {
        let c = cfg("22:00", "05:00");
        assert_eq!(window_deadline(LocalTime::hms(21, 59, 59), &c), None);
        assert_eq!(window_deadline(LocalTime::hms(22, 0, 0), &c), Some(Duration::from_secs(7 * 3600)));
        assert_eq!(
            window_deadline(LocalTime::hms(23, 30, 0), &c),
            Some(Duration::from_secs(5 * 3600 + 1800))
        );
        assert_eq!(window_deadline(LocalTime::hms(4, 59, 0), &c), Some(Duration::from_secs(60)));
        assert_eq!(window_deadline(LocalTime::hms(5, 0, 0), &c), None);
        assert_eq!(window_deadline(LocalTime::hms(12, 0, 0), &c), None);
    }

    #[test]
    fn window_within_one_day_and_always_open() {
        let c = cfg("01:00", "03:30");
        assert_eq!(window_deadline(LocalTime::hms(0, 59, 0), &c), None);
        assert_eq!(window_deadline(LocalTime::hms(1, 0, 0), &c), Some(Duration::from_secs(9000)));
        assert_eq!(window_deadline(LocalTime::hms(3, 30, 0), &c), None);
        let c = cfg("02:00", "02:00");
        assert!(window_deadline(LocalTime::hms(17, 0, 0), &c).is_some());
    }

    #[test]
    fn stop_flag_and_deadline_are_seen() {
        let flag = AtomicBool::new(false);
        let w = StopWhen { flag: Some(&flag), deadline: None };
        assert_eq!(w.check(), None);
        flag.store(true, Ordering::SeqCst);
        assert_eq!(w.check(), Some(StopReason::Signal));
        let w = StopWhen { flag: None, deadline: Some(Instant::now()) };
        assert_eq!(w.check(), Some(StopReason::Deadline));
        assert!(LocalTime::now().secs_of_day < 86_400);
    }
}
