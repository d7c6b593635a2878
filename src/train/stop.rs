//! When a round must stop early: SIGTERM/SIGINT (a stop flag the loop checks
//! between optimizer steps), `--max-minutes`, and the end of the nightly
//! window. [`window_deadline`] is shared with the service's scheduler.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::config::Config;

/// The signals that ask a one-shot command (and the service) to stop.
pub const STOP_SIGNALS: [i32; 2] = [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT];

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();
static INSTALLING: Mutex<()> = Mutex::new(());

/// Install SIGTERM and SIGINT handlers that raise the returned flag (once
/// per process; later calls return the same flag). The first signal only
/// raises it; a second one while it is raised takes the default action, so
/// an operator can still kill a stuck process with a second Ctrl-C.
pub fn install_stop_signals() -> std::io::Result<&'static AtomicBool> {
    // Registering the handlers twice would make the first signal kill.
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = STOP.get() {
        return Ok(f);
    }
    let flag = Arc::new(AtomicBool::new(false));
    raise_on(&STOP_SIGNALS, &flag)?;
    Ok(STOP.get_or_init(|| flag))
}

/// Raise `flag` on each of `signals`; one arriving while the flag is already
/// raised takes the signal's default action. A signal that should only raise
/// a flag every time (SIGHUP: reload) needs just `signal_hook::flag::register`.
pub fn raise_on(signals: &[i32], flag: &Arc<AtomicBool>) -> std::io::Result<()> {
    for &sig in signals {
        // Registered first, so it sees the flag before this signal raises it.
        signal_hook::flag::register_conditional_default(sig, flag.clone())?;
        signal_hook::flag::register(sig, flag.clone())?;
    }
    Ok(())
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

    /// The current local time (the system time zone).
    pub fn now() -> Self {
        Self { secs_of_day: crate::sys::local_seconds_of_day() }
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
    fn a_stop_signal_raises_the_one_flag() {
        let flag = install_stop_signals().unwrap();
        assert!(std::ptr::eq(flag, install_stop_signals().unwrap()), "installed once");
        // One signal only: a second, with the flag raised, would end the test process.
        signal_hook::low_level::raise(signal_hook::consts::SIGTERM).unwrap();
        let t = Instant::now();
        while !flag.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(flag.load(Ordering::SeqCst));
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
