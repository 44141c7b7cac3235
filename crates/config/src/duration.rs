//! Durations as people write them: `"90s"`, `"5m"`, `"1h 30m"`, `"250ms"`.
//!
//! Parsing and formatting use `humantime`, so the accepted units are those of
//! [`humantime::parse_duration`] (`ms`, `s`, `m`, `h`, `d`, … and their long forms).
//! A bare number such as `"300"` is rejected: the unit is never guessed.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The shortest allowed [`SuspendTimeout::After`]: 1 second.
const MIN_SUSPEND_TIMEOUT: Duration = Duration::from_secs(1);

/// The default [`SuspendTimeout`]: 5 minutes.
const DEFAULT_SUSPEND_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The longest duration any setting takes: 100 years (365.25 days each). Longer ones are
/// refused: no timer needs them, and adding one to a clock reading would overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// Why a string is not a [`HumanDuration`] or [`SuspendTimeout`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a duration at all, e.g. `"5 parsecs"` or `"300"` (no unit).
    #[error("{input:?} is not a duration (examples: 90s, 5m, 1h)")]
    NotADuration {
        /// The rejected input.
        input: String,
    },
    /// Longer than [`MAX_DURATION`], e.g. `"1000000000h"`.
    #[error("{input:?} is too long: at most 100 years")]
    TooLong {
        /// The rejected input.
        input: String,
    },
    /// A suspend timeout below 1 second, e.g. `"500ms"`.
    #[error("{input:?} is too short: suspend_timeout must be at least 1s, or \"never\"")]
    SuspendTooShort {
        /// The rejected input.
        input: String,
    },
}

/// Parses `s` (surrounding whitespace ignored) with humantime; at most [`MAX_DURATION`].
///
/// # Errors
///
/// [`DurationError::NotADuration`], [`DurationError::TooLong`].
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let d = humantime::parse_duration(s.trim()).map_err(|_| DurationError::NotADuration {
        input: s.to_owned(),
    })?;
    if d > MAX_DURATION {
        return Err(DurationError::TooLong {
            input: s.to_owned(),
        });
    }
    Ok(d)
}

/// A [`Duration`] that is written and read as a human string such as `"90s"` or `"1h 30m"`.
///
/// `Display` and `Serialize` use humantime's format (`90s` is written back as `1m 30s`);
/// `FromStr` and `Deserialize` accept anything [`humantime::parse_duration`] accepts. Any
/// other input, including a number without a unit, is an error whose message is
/// `"5 parsecs" is not a duration (examples: 90s, 5m, 1h)`. Non-strings (a TOML integer,
/// say) are rejected by serde as the wrong type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The wrapped [`Duration`].
    pub fn get(self) -> Duration {
        self.0
    }
}

impl From<Duration> for HumanDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Self {
        d.0
    }
}

impl FromStr for HumanDuration {
    type Err = DurationError;

    /// Parses a humantime duration; see the type's documentation.
    fn from_str(s: &str) -> Result<Self, DurationError> {
        parse_duration(s).map(Self)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromStrVisitor::new("a duration such as \"90s\" or \"5m\""))
    }
}

/// How long an endpoint's compute may sit idle (no client connections) before it is
/// stopped.
///
/// Written as `"never"` (case-insensitive) or a duration such as `"5m"` or `"1h 30m"`,
/// which must be at least 1 second. Defaults to 5 minutes.
///
/// # Errors
///
/// `FromStr` and `Deserialize` fail with
/// - `"5 parsecs" is not a duration (examples: 90s, 5m, 1h)` for garbage,
/// - `"500ms" is too short: suspend_timeout must be at least 1s, or "never"` below 1s.
///
/// `Display` and `Serialize` write `never` or the humantime form (`5m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SuspendTimeout {
    /// Never suspend: the compute keeps running once started.
    Never,
    /// Suspend after this much idle time (at least 1 second).
    After(Duration),
}

impl SuspendTimeout {
    /// The idle time after which to suspend, or `None` for [`SuspendTimeout::Never`].
    pub fn duration(self) -> Option<Duration> {
        match self {
            Self::Never => None,
            Self::After(d) => Some(d),
        }
    }
}

impl Default for SuspendTimeout {
    /// 5 minutes.
    fn default() -> Self {
        Self::After(DEFAULT_SUSPEND_TIMEOUT)
    }
}

impl FromStr for SuspendTimeout {
    type Err = DurationError;

    /// Parses `"never"` or a duration of at least 1s; see the type's documentation.
    fn from_str(s: &str) -> Result<Self, DurationError> {
        if s.trim().eq_ignore_ascii_case("never") {
            return Ok(Self::Never);
        }
        let d = parse_duration(s)?;
        if d < MIN_SUSPEND_TIMEOUT {
            return Err(DurationError::SuspendTooShort {
                input: s.to_owned(),
            });
        }
        Ok(Self::After(d))
    }
}

impl fmt::Display for SuspendTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Never => f.write_str("never"),
            Self::After(d) => humantime::format_duration(*d).fmt(f),
        }
    }
}

impl Serialize for SuspendTimeout {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SuspendTimeout {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromStrVisitor::new(
            "a duration such as \"5m\", or \"never\"",
        ))
    }
}

/// A serde visitor that accepts only strings and parses them with `T::from_str`, using
/// the parse error's text as the message. `expecting` describes the accepted form for
/// wrong-type errors ("expected a duration such as ...").
pub(crate) struct FromStrVisitor<T> {
    expecting: &'static str,
    _marker: std::marker::PhantomData<fn() -> T>,
}

impl<T> FromStrVisitor<T> {
    pub(crate) fn new(expecting: &'static str) -> Self {
        Self {
            expecting,
            _marker: std::marker::PhantomData,
        }
    }
}

impl<T> Visitor<'_> for FromStrVisitor<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn human_duration_parses_common_forms() {
        let cases = [
            ("90s", Duration::from_secs(90)),
            ("5m", Duration::from_secs(300)),
            ("1h 30m", Duration::from_secs(5400)),
            ("250ms", Duration::from_millis(250)),
            (" 2h ", Duration::from_secs(7200)),
        ];
        for (input, want) in cases {
            let got: HumanDuration = input.parse().unwrap();
            assert_eq!(got.get(), want, "input {input:?}");
        }
    }

    #[test]
    fn human_duration_rejects_garbage() {
        for bad in ["5 parsecs", "300", "", "fast", "-5s"] {
            let err = bad.parse::<HumanDuration>().unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("{bad:?} is not a duration (examples: 90s, 5m, 1h)")
            );
        }
    }

    #[test]
    fn durations_past_a_hundred_years_are_refused() {
        for long in ["1000000000h", "18446744073709551615s", "101years"] {
            let err = long.parse::<HumanDuration>().unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("{long:?} is too long: at most 100 years")
            );
            assert!(long.parse::<SuspendTimeout>().is_err());
        }
        assert_eq!(
            "100years".parse::<HumanDuration>().unwrap().get(),
            MAX_DURATION
        );
    }

    #[test]
    fn human_duration_display_and_serde() {
        assert_eq!(
            HumanDuration(Duration::from_secs(5400)).to_string(),
            "1h 30m"
        );
        assert_eq!(
            HumanDuration(Duration::from_millis(250)).to_string(),
            "250ms"
        );
        let d = HumanDuration::from(Duration::from_secs(90));
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, "\"1m 30s\"");
        assert_eq!(serde_json::from_str::<HumanDuration>(&json).unwrap(), d);

        let err = serde_json::from_str::<HumanDuration>("\"5 parsecs\"").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("\"5 parsecs\" is not a duration (examples: 90s, 5m, 1h)"),
            "{err}"
        );
        let err = serde_json::from_str::<HumanDuration>("300").unwrap_err();
        assert!(
            err.to_string().contains("expected a duration such as"),
            "{err}"
        );
    }

    #[test]
    fn suspend_timeout_parses() {
        assert_eq!(
            "never".parse::<SuspendTimeout>().unwrap(),
            SuspendTimeout::Never
        );
        assert_eq!(
            "Never".parse::<SuspendTimeout>().unwrap(),
            SuspendTimeout::Never
        );
        assert_eq!(
            "1s".parse::<SuspendTimeout>().unwrap(),
            SuspendTimeout::After(Duration::from_secs(1))
        );
        assert_eq!(
            "10m".parse::<SuspendTimeout>().unwrap().duration(),
            Some(Duration::from_secs(600))
        );
        assert_eq!(SuspendTimeout::Never.duration(), None);
    }

    #[test]
    fn suspend_timeout_rejects_short_and_garbage() {
        assert_eq!(
            "500ms".parse::<SuspendTimeout>().unwrap_err().to_string(),
            "\"500ms\" is too short: suspend_timeout must be at least 1s, or \"never\""
        );
        assert_eq!(
            "0s".parse::<SuspendTimeout>().unwrap_err(),
            DurationError::SuspendTooShort { input: "0s".into() }
        );
        assert_eq!(
            "5 parsecs"
                .parse::<SuspendTimeout>()
                .unwrap_err()
                .to_string(),
            "\"5 parsecs\" is not a duration (examples: 90s, 5m, 1h)"
        );
    }

    #[test]
    fn suspend_timeout_default_display_serde() {
        assert_eq!(
            SuspendTimeout::default(),
            SuspendTimeout::After(Duration::from_secs(300))
        );
        assert_eq!(SuspendTimeout::default().to_string(), "5m");
        assert_eq!(SuspendTimeout::Never.to_string(), "never");
        for value in [
            SuspendTimeout::Never,
            SuspendTimeout::After(Duration::from_secs(3600)),
        ] {
            let json = serde_json::to_string(&value).unwrap();
            assert_eq!(
                serde_json::from_str::<SuspendTimeout>(&json).unwrap(),
                value
            );
        }
        assert_eq!(
            serde_json::to_string(&SuspendTimeout::Never).unwrap(),
            "\"never\""
        );
        assert!(serde_json::from_str::<SuspendTimeout>("\"500ms\"").is_err());
    }
}
