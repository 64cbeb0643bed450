//! Logging to the proxy's log, tagged there with the filter's name:
//! `weft_sdk::info!("routed to {}", cluster)`.

use crate::host::{self, LogLevel};

/// Logs `message` at `level` (what the macros call).
pub fn log(level: LogLevel, message: &str) {
    host::log(level, message);
}

/// Logs at the `trace` level (the finest detail), with `format!` arguments.
#[macro_export]
macro_rules! trace { ($($arg:tt)*) => { $crate::log::log($crate::LogLevel::Trace, &format!($($arg)*)) }; }
/// Logs at the `debug` level (detail for whoever debugs the filter), with `format!` arguments.
#[macro_export]
macro_rules! debug { ($($arg:tt)*) => { $crate::log::log($crate::LogLevel::Debug, &format!($($arg)*)) }; }
/// Logs at the `info` level (a normal event), with `format!` arguments.
#[macro_export]
macro_rules! info { ($($arg:tt)*) => { $crate::log::log($crate::LogLevel::Info, &format!($($arg)*)) }; }
/// Logs at the `warn` level (something off, the request goes on), with `format!` arguments.
#[macro_export]
macro_rules! warn { ($($arg:tt)*) => { $crate::log::log($crate::LogLevel::Warn, &format!($($arg)*)) }; }
/// Logs at the `error` level (a failure), with `format!` arguments.
#[macro_export]
macro_rules! error { ($($arg:tt)*) => { $crate::log::log($crate::LogLevel::Error, &format!($($arg)*)) }; }
