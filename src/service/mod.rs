//! The long-lived service (`warsha serve`): its threads, the writer, the
//! socket and the scheduler's rules.

pub mod schedule;
