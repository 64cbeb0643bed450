//! Config values with units, as weft's own config writes them, for filter configs to use as
//! field types: `timeout: weft_sdk::units::Duration` reads `250ms`, `2s`, `1.5s` or `1m`.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::str::FromStr;

/// A duration written with a unit: `ms`, `s` or `m`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// The duration itself.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid =
            || format!("invalid duration {text:?}: expected a number with a unit (ms, s, m), e.g. 250ms or 2s");
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(invalid)?;
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().map_err(|_| invalid())?;
        let seconds = match unit {
            "ms" => number / 1000.0,
            "s" => number,
            "m" => number * 60.0,
            _ => return Err(invalid()),
        };
        std::time::Duration::try_from_secs_f64(seconds).map(Duration).map_err(|_| invalid())
    }
}

/// Prints in milliseconds (`1500ms`), which weft reads back exactly.
impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_secs_f64() * 1000.0;
        write!(f, "{millis}ms")
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::Duration;

    #[test]
    fn durations_read_with_their_unit_and_print_back_exactly() {
        let read = |text: &str| text.parse::<Duration>().map(|d| d.0.as_millis());
        assert_eq!(read("250ms"), Ok(250));
        assert_eq!(read("1.5s"), Ok(1500));
        assert_eq!(read("2m"), Ok(120_000));
        assert!(read("5").unwrap_err().contains("invalid duration \"5\""));
        assert!(read("5h").is_err());
        assert_eq!("1.5s".parse::<Duration>().unwrap().to_string(), "1500ms");
    }

    #[test]
    fn a_bad_duration_in_a_config_names_itself() {
        #[derive(serde::Deserialize, Debug)]
        struct Config {
            #[allow(dead_code)]
            timeout: Duration,
        }
        let error = serde_json::from_str::<Config>(r#"{"timeout": "soon"}"#).unwrap_err().to_string();
        assert!(error.contains("invalid duration \"soon\""), "{error}");
    }
}
