//! The scheduler's rules, as one pure function: given the nightly window
//! (`[schedule]`, local HH:MM, may cross midnight), the time now, the newest
//! round and whether anything new arrived since the last finished round,
//! [`decide`] says whether to start a round, resume the paused one, catch
//! up once for a window the box slept through, or wait until an instant.
//!
//! - Inside the window: a paused or interrupted round is resumed; else a
//!   new round starts only when there is new material; with nothing new the
//!   scheduler looks again every [`RECHECK`] (or sooner, when the service
//!   wakes it because material arrived). A round that failed in this window
//!   is not retried before the next one.
//! - Outside it: wait for the next window's start — except on the first
//!   decision after boot, when the most recent window passed with no round
//!   active in it and there is work (new material or a paused round): that
//!   window is caught up once, now, for at most one window's length. Several
//!   missed nights still make one catch-up: the catch-up round is activity
//!   after the most recent window's start.
//! - "Train now" overrides the window and the new-material rule; inside the
//!   window the round still stops at its end.
//!
//! Deadlines are durations from `now` (the service adds them to its
//! monotonic clock). Local days are taken as 24 h: on a daylight-saving
//! change a window's edges are off by the shift for that one night.
//! This module knows nothing of threads, the store or the model.

use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::train::stop::{window_deadline, LocalTime};

/// How often to look again inside the window when there was nothing new.
pub const RECHECK: Duration = Duration::from_secs(15 * 60);

/// With a window that never closes, how long a failed round waits before the next try.
pub const FAILED_BACKOFF: Duration = Duration::from_secs(3600);

const DAY: i64 = 86_400;

/// The time now, both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Unix seconds.
    pub unix: i64,
    /// Local time of day.
    pub local: LocalTime,
}

impl Now {
    pub fn current() -> Self {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Self { unix, local: LocalTime::now() }
    }
}

/// A round's state (`runs.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundState {
    /// Left running: in a fresh process, one that died mid-round.
    Running,
    Paused,
    Interrupted,
    Done,
    Failed,
}

impl RoundState {
    /// The state of a `runs.status` value (unknown values count as failed).
    pub fn from_status(s: &str) -> Self {
        match s {
            "running" => RoundState::Running,
            "paused" => RoundState::Paused,
            "interrupted" => RoundState::Interrupted,
            "done" => RoundState::Done,
            _ => RoundState::Failed,
        }
    }

    /// A round the next turn continues from its checkpoint.
    pub fn resumable(self) -> bool {
        matches!(self, RoundState::Running | RoundState::Paused | RoundState::Interrupted)
    }
}

/// The newest round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Last {
    pub state: RoundState,
    /// Unix seconds of the last time it started, stepped, paused or ended.
    pub active_unix: i64,
}

impl From<&crate::store::LastRound> for Last {
    fn from(r: &crate::store::LastRound) -> Self {
        Last { state: RoundState::from_status(&r.status), active_unix: r.active_unix }
    }
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct Situation {
    pub now: Now,
    pub last: Option<Last>,
    /// Documents, Q&A pairs or reviews the last finished round did not learn from.
    pub new_material: bool,
    /// An operator asked for a round now.
    pub train_now: bool,
    /// The first decision since the service started.
    pub first_since_boot: bool,
}

/// Why the scheduler waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    /// Outside the window.
    OutsideWindow,
    /// Inside the window, but nothing new since the last round.
    NothingNew,
    /// A round failed in this window; the next window tries again.
    FailedThisWindow,
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Decision {
    /// Start a new round; `deadline`: time left in the window (None: no limit).
    Start { deadline: Option<Duration> },
    /// Continue the paused or interrupted round.
    Resume { deadline: Option<Duration> },
    /// Catch up a missed window once: resume the paused round (`resume`) or
    /// start one, for at most `deadline` (one window's length).
    CatchUp { resume: bool, deadline: Duration },
    /// Nothing to do before `until_unix` (`wait` from now), unless woken.
    Wait { until_unix: i64, wait: Duration, reason: WaitReason },
}

/// The window's length; a window whose start equals its end never closes (a full day).
pub fn window_length(cfg: &Config) -> Duration {
    let (s, e) = cfg.window_minutes();
    let mins = (i64::from(e) - i64::from(s)).rem_euclid(24 * 60);
    Duration::from_secs(if mins == 0 { DAY as u64 } else { mins as u64 * 60 })
}

/// Unix seconds of the most recent window start at or before `now`, and of the next one after it.
fn window_starts(cfg: &Config, now: Now) -> (i64, i64) {
    let start = i64::from(cfg.window_minutes().0) * 60;
    let today = now.unix - i64::from(now.local.secs_of_day) + start;
    if today <= now.unix {
        (today, today + DAY)
    } else {
        (today - DAY, today)
    }
}

fn wait(now: Now, until_unix: i64, reason: WaitReason) -> Decision {
    let until_unix = until_unix.max(now.unix);
    Decision::Wait { until_unix, wait: Duration::from_secs((until_unix - now.unix) as u64), reason }
}

/// The scheduler's decision (rules in the module's paragraph).
pub fn decide(cfg: &Config, s: &Situation) -> Decision {
    let now = s.now;
    let inside = window_deadline(now.local, cfg);
    let resumable = s.last.is_some_and(|l| l.state.resumable());
    if s.train_now {
        return if resumable {
            Decision::Resume { deadline: inside }
        } else {
            Decision::Start { deadline: inside }
        };
    }
    let length = window_length(cfg);
    let always_open = length.as_secs() as i64 == DAY;
    let (prev_start, next_start) = window_starts(cfg, now);
    match inside {
        Some(left) => {
            if resumable {
                return Decision::Resume { deadline: Some(left) };
            }
            let this_start = if always_open { now.unix - DAY } else { prev_start };
            if s.last.is_some_and(|l| l.state == RoundState::Failed && l.active_unix >= this_start) {
                let until = if always_open { now.unix + FAILED_BACKOFF.as_secs() as i64 } else { next_start };
                return wait(now, until, WaitReason::FailedThisWindow);
            }
            if s.new_material {
                return Decision::Start { deadline: Some(left) };
            }
            let until = (now.unix + RECHECK.as_secs() as i64).min(now.unix + left.as_secs() as i64);
            wait(now, until, WaitReason::NothingNew)
        }
        None => {
            let missed = s.last.is_none_or(|l| l.active_unix < prev_start);
            if s.first_since_boot && missed && (resumable || s.new_material) {
                return Decision::CatchUp { resume: resumable, deadline: length };
            }
            wait(now, next_start, WaitReason::OutsideWindow)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(start: &str, end: &str) -> Config {
        let text = format!("[schedule]\nwindow_start = \"{start}\"\nwindow_end = \"{end}\"\n");
        Config::from_layers(Some(("t.toml", &text))).unwrap()
    }

    /// Day 100 (local midnight at unix 100 × 86 400, i.e. a UTC box) at h:m.
    fn at(day: i64, h: u32, m: u32) -> Now {
        let local = LocalTime::hms(h, m, 0);
        Now { unix: day * DAY + i64::from(local.secs_of_day), local }
    }

    fn sit(now: Now, last: Option<(RoundState, Now)>, new_material: bool) -> Situation {
        Situation {
            now,
            last: last.map(|(state, t)| Last { state, active_unix: t.unix }),
            new_material,
            train_now: false,
            first_since_boot: false,
        }
    }

    const H: u64 = 3600;

    #[test]
    fn window_across_midnight_starts_with_new_material_and_stops_at_its_end() {
        let c = cfg("22:00", "05:00");
        assert_eq!(window_length(&c), Duration::from_secs(7 * H));
        let done = Some((RoundState::Done, at(99, 23, 0)));
        // 23:00 and 02:00 are both inside; the deadline is 05:00.
        assert_eq!(
            decide(&c, &sit(at(100, 23, 0), done, true)),
            Decision::Start { deadline: Some(Duration::from_secs(6 * H)) }
        );
        assert_eq!(
            decide(&c, &sit(at(101, 2, 0), done, true)),
            Decision::Start { deadline: Some(Duration::from_secs(3 * H)) }
        );
        // Noon: wait for 22:00 the same day; 05:00: seventeen hours.
        let d = decide(&c, &sit(at(100, 12, 0), done, true));
        assert_eq!(
            d,
            Decision::Wait {
                until_unix: at(100, 22, 0).unix,
                wait: Duration::from_secs(10 * H),
                reason: WaitReason::OutsideWindow
            }
        );
        let d = decide(&c, &sit(at(101, 5, 0), done, true));
        assert!(
            matches!(d, Decision::Wait { wait, reason: WaitReason::OutsideWindow, .. } if wait == Duration::from_secs(17 * H))
        );
    }

    #[test]
    fn nothing_new_waits_and_looks_again() {
        let c = cfg("22:00", "05:00");
        let done = Some((RoundState::Done, at(99, 23, 0)));
        let d = decide(&c, &sit(at(100, 22, 30), done, false));
        assert_eq!(
            d,
            Decision::Wait {
                until_unix: at(100, 22, 45).unix,
                wait: RECHECK,
                reason: WaitReason::NothingNew
            }
        );
        // Near the end of the window, it looks again no later than the end.
        let d = decide(&c, &sit(at(101, 4, 55), done, false));
        assert!(matches!(d, Decision::Wait { wait, .. } if wait == Duration::from_secs(300)));
        // Nothing ever trained and nothing to learn: wait too.
        assert!(matches!(
            decide(&c, &sit(at(100, 23, 0), None, false)),
            Decision::Wait { reason: WaitReason::NothingNew, .. }
        ));
    }

    #[test]
    fn paused_round_is_resumed_in_the_next_window() {
        let c = cfg("22:00", "05:00");
        let paused = Some((RoundState::Paused, at(100, 5, 0)));
        // During the day it waits, with or without new material.
        assert!(matches!(
            decide(&c, &sit(at(100, 14, 0), paused, true)),
            Decision::Wait { reason: WaitReason::OutsideWindow, .. }
        ));
        // The next window resumes it whether or not anything new arrived.
        assert_eq!(
            decide(&c, &sit(at(100, 22, 0), paused, false)),
            Decision::Resume { deadline: Some(Duration::from_secs(7 * H)) }
        );
        // A round left running by a crash is resumed the same way.
        let crashed = Some((RoundState::Running, at(100, 23, 0)));
        assert_eq!(
            decide(&c, &sit(at(100, 23, 30), crashed, false)),
            Decision::Resume { deadline: Some(Duration::from_secs(5 * H + 1800)) }
        );
    }

    #[test]
    fn a_missed_window_is_caught_up_once_on_boot() {
        let c = cfg("22:00", "05:00");
        // Off for three nights: the last round was four days ago.
        let old = Some((RoundState::Done, at(96, 23, 0)));
        let mut s = sit(at(100, 12, 0), old, true);
        s.first_since_boot = true;
        assert_eq!(decide(&c, &s), Decision::CatchUp { resume: false, deadline: Duration::from_secs(7 * H) });
        // Not on later decisions of the same boot: once, not once per missed night.
        s.first_since_boot = false;
        assert!(matches!(decide(&c, &s), Decision::Wait { reason: WaitReason::OutsideWindow, .. }));
        // The catch-up round itself is activity after the last window: a reboot does not repeat it.
        let caught = Some((RoundState::Done, at(100, 12, 5)));
        let mut s = sit(at(100, 13, 0), caught, true);
        s.first_since_boot = true;
        assert!(matches!(decide(&c, &s), Decision::Wait { .. }));
        // Last night's window ran: nothing was missed.
        let mut s = sit(at(100, 12, 0), Some((RoundState::Done, at(99, 23, 0))), true);
        s.first_since_boot = true;
        assert!(matches!(decide(&c, &s), Decision::Wait { .. }));
        // A missed window with nothing to learn is not caught up; a paused round is.
        let mut s = sit(at(100, 12, 0), old, false);
        s.first_since_boot = true;
        assert!(matches!(decide(&c, &s), Decision::Wait { .. }));
        let mut s = sit(at(100, 12, 0), Some((RoundState::Paused, at(97, 5, 0))), false);
        s.first_since_boot = true;
        assert_eq!(decide(&c, &s), Decision::CatchUp { resume: true, deadline: Duration::from_secs(7 * H) });
    }

    #[test]
    fn train_now_overrides_the_window_and_the_new_material_rule() {
        let c = cfg("22:00", "05:00");
        let done = Some((RoundState::Done, at(99, 23, 0)));
        let mut s = sit(at(100, 12, 0), done, false);
        s.train_now = true;
        assert_eq!(decide(&c, &s), Decision::Start { deadline: None });
        s.last = Some(Last { state: RoundState::Paused, active_unix: at(100, 5, 0).unix });
        assert_eq!(decide(&c, &s), Decision::Resume { deadline: None });
        // Inside the window the window's end still stops it.
        let mut s = sit(at(100, 23, 0), done, false);
        s.train_now = true;
        assert_eq!(decide(&c, &s), Decision::Start { deadline: Some(Duration::from_secs(6 * H)) });
    }

    #[test]
    fn a_failed_round_is_not_retried_in_the_same_window() {
        let c = cfg("22:00", "05:00");
        let failed = Some((RoundState::Failed, at(100, 22, 30)));
        let d = decide(&c, &sit(at(100, 23, 0), failed, true));
        assert_eq!(
            d,
            Decision::Wait {
                until_unix: at(101, 22, 0).unix,
                wait: Duration::from_secs(23 * H),
                reason: WaitReason::FailedThisWindow
            }
        );
        // The next window tries again.
        assert!(matches!(decide(&c, &sit(at(101, 22, 0), failed, true)), Decision::Start { .. }));
    }

    #[test]
    fn window_within_one_day_and_always_open() {
        let c = cfg("01:00", "03:30");
        assert_eq!(window_length(&c), Duration::from_secs(9000));
        assert!(matches!(decide(&c, &sit(at(100, 2, 0), None, true)), Decision::Start { .. }));
        let d = decide(&c, &sit(at(100, 4, 0), None, true));
        assert!(matches!(d, Decision::Wait { wait, .. } if wait == Duration::from_secs(21 * H)));
        let c = cfg("02:00", "02:00");
        assert_eq!(window_length(&c), Duration::from_secs(24 * H));
        assert!(matches!(decide(&c, &sit(at(100, 17, 0), None, true)), Decision::Start { .. }));
        let failed = Some((RoundState::Failed, at(100, 16, 0)));
        let d = decide(&c, &sit(at(100, 17, 0), failed, true));
        assert_eq!(
            d,
            Decision::Wait {
                until_unix: at(100, 18, 0).unix,
                wait: FAILED_BACKOFF,
                reason: WaitReason::FailedThisWindow
            }
        );
    }

    #[test]
    fn round_states_from_the_store() {
        assert!(RoundState::from_status("paused").resumable());
        assert!(RoundState::from_status("interrupted").resumable());
        assert!(RoundState::from_status("running").resumable());
        assert!(!RoundState::from_status("done").resumable());
        assert_eq!(RoundState::from_status("bogus"), RoundState::Failed);
        assert!(Now::current().unix > 1_700_000_000);
    }
}
