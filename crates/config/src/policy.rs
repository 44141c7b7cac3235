//! The autosuspend policy: when an idle endpoint's compute is stopped.
//!
//! A compute with no client connections is stopped after its
//! [`suspend_timeout`](AutosuspendPolicy::suspend_timeout), unless the current time falls
//! inside one of its keep-warm windows, such as `"Mon-Fri 08:00-18:00 Europe/Berlin"`.
//! Windows are evaluated in their own time zone's wall-clock time, using the IANA
//! database compiled into `chrono-tz`, so a window means the same on every host.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration::{FromStrVisitor, SuspendTimeout};

/// Minutes in a day; also the largest allowed end time (24:00).
const DAY_MINUTES: u16 = 24 * 60;

/// Day names in `Weekday::num_days_from_monday` order, as written by `Display`.
const DAY_ABBREVS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// Full day names, lowercase, also accepted by the parser.
const DAY_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// Why a string is not a [`KeepWarmWindow`].
///
/// Every message quotes the whole input, then the part that is wrong and the expected
/// form, for example
/// `"Mon-Fri 8-18" is not a keep-warm window: "8-18" is not a time range like 08:00-18:00`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// Not two or three space-separated parts.
    #[error(
        "{input:?} is not a keep-warm window: expected \"<days> <HH:MM>-<HH:MM> [time zone]\", \
         like \"Mon-Fri 08:00-18:00 Europe/Berlin\""
    )]
    Shape {
        /// The whole rejected input.
        input: String,
    },
    /// The days part is not a day, a day range, a comma list of those, `daily` or `*`.
    #[error(
        "{input:?} is not a keep-warm window: {days:?} is not a set of days \
         (use a day like Mon, a range like Mon-Fri, a list like Mon,Wed,Fri, or daily)"
    )]
    Days {
        /// The whole rejected input.
        input: String,
        /// The days part.
        days: String,
    },
    /// The time part is not `HH:MM-HH:MM`.
    #[error("{input:?} is not a keep-warm window: {range:?} is not a time range like 08:00-18:00")]
    TimeRange {
        /// The whole rejected input.
        input: String,
        /// The time-range part.
        range: String,
    },
    /// A time of the right shape but out of range (`25:00`, `08:60`, `24:30`).
    #[error("{input:?} is not a keep-warm window: {time:?} is not a time between 00:00 and 24:00")]
    Time {
        /// The whole rejected input.
        input: String,
        /// The offending time.
        time: String,
    },
    /// The window starts at `24:00`, which is only allowed as an end time.
    #[error(
        "{input:?} is not a keep-warm window: a window cannot start at 24:00 (use 00:00 of the next day)"
    )]
    StartAt24 {
        /// The whole rejected input.
        input: String,
    },
    /// The time zone is not in the IANA database.
    #[error("{input:?} is not a keep-warm window: {tz:?} is not an IANA time zone")]
    TimeZone {
        /// The whole rejected input.
        input: String,
        /// The time-zone part.
        tz: String,
    },
}

/// A weekly period during which an idle compute is kept running.
///
/// Written as `<days> <HH:MM>-<HH:MM> [<IANA time zone>]`, for example
/// `"Mon-Fri 08:00-18:00 Europe/Berlin"`; the time zone defaults to `UTC`.
///
/// - **Days**: a day (`Mon`..`Sun` or `Monday`..`Sunday`, case-insensitive), a range
///   `Mon-Fri` (ranges may wrap, `Fri-Mon` is Fri, Sat, Sun, Mon), a comma list whose items
///   are days or ranges (`Mon,Wed,Fri-Sat`, no spaces), or `daily` / `*` for every day.
/// - **Times**: `HH:MM` from `00:00` to `24:00` (`24:00` only as the end). The start is
///   inclusive, the end exclusive. If the end is not after the start, the window crosses
///   midnight and belongs to the day it starts on: `Fri 22:00-06:00` covers Friday 22:00
///   to Saturday 06:00, and `Mon 08:00-08:00` covers 24 hours.
///
/// Times are wall-clock times in the window's zone, so `08:00` stays `08:00` across DST
/// changes; a local time skipped by a DST change simply never occurs, and one that occurs
/// twice is inside the window both times.
///
/// `Display` writes a canonical form that parses back to an equal value (days as ranges
/// starting on Monday where possible, zero-padded times, the zone always given), e.g.
/// `Mon-Fri 08:00-18:00 Europe/Berlin`. Serde uses the same string form.
///
/// # Errors
///
/// `FromStr` and `Deserialize` fail with a [`WindowError`] naming the wrong part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepWarmWindow {
    /// Bit `i` set = the window starts on day `i` (0 = Monday .. 6 = Sunday).
    days: u8,
    /// Start, minutes after local midnight, `0..1440`.
    start: u16,
    /// End, minutes after local midnight, `0..=1440`.
    end: u16,
    /// The zone whose wall-clock time the window is in.
    tz: Tz,
}

impl KeepWarmWindow {
    /// Whether the instant `at` falls inside this window, judged by the wall-clock time
    /// in the window's time zone (see the type's documentation for the boundaries).
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&self.tz);
        let today = local.weekday().num_days_from_monday();
        let yesterday = (today + 6) % 7;
        let secs = local.num_seconds_from_midnight();
        let start = u32::from(self.start) * 60;
        let end = u32::from(self.end) * 60;
        if self.end > self.start {
            self.has_day(today) && start <= secs && secs < end
        } else {
            (self.has_day(today) && secs >= start) || (self.has_day(yesterday) && secs < end)
        }
    }

    /// The time zone the window is evaluated in.
    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// Whether the window starts on `day`.
    pub fn starts_on(&self, day: Weekday) -> bool {
        self.has_day(day.num_days_from_monday())
    }

    fn has_day(&self, index: u32) -> bool {
        self.days & (1 << index) != 0
    }
}

/// Parses one day name (abbreviated or full, any case) to `0..7`, Monday = 0.
fn parse_day(s: &str) -> Option<u8> {
    let lower = s.to_ascii_lowercase();
    (0u8..7).find(|&i| {
        let i = usize::from(i);
        lower == DAY_NAMES[i] || lower == DAY_ABBREVS[i].to_ascii_lowercase()
    })
}

/// Parses the days part into a bitmask, `None` if it is not valid.
fn parse_days(s: &str) -> Option<u8> {
    if s == "*" || s.eq_ignore_ascii_case("daily") {
        return Some(0x7f);
    }
    let mut mask = 0u8;
    for item in s.split(',') {
        match item.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (parse_day(from)?, parse_day(to)?);
                let mut d = from;
                loop {
                    mask |= 1 << d;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => mask |= 1 << parse_day(item)?,
        }
    }
    Some(mask)
}

/// Whether `s` is shaped like `H:MM` or `HH:MM` (digits only; range not checked).
fn is_time_shaped(s: &str) -> bool {
    match s.split_once(':') {
        Some((h, m)) => {
            (1..=2).contains(&h.len())
                && m.len() == 2
                && h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// Converts a time-shaped string to minutes after midnight, `None` if out of range.
fn time_minutes(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    let minutes = h * 60 + m;
    (m < 60 && minutes <= DAY_MINUTES).then_some(minutes)
}

impl FromStr for KeepWarmWindow {
    type Err = WindowError;

    /// Parses `<days> <HH:MM>-<HH:MM> [<IANA time zone>]`; see the type's documentation.
    fn from_str(input: &str) -> Result<Self, WindowError> {
        let owned = || input.to_owned();
        let parts: Vec<&str> = input.split_whitespace().collect();
        let (days_s, range_s, tz_s) = match parts[..] {
            [d, r] => (d, r, None),
            [d, r, tz] => (d, r, Some(tz)),
            _ => return Err(WindowError::Shape { input: owned() }),
        };

        let days = parse_days(days_s).ok_or_else(|| WindowError::Days {
            input: owned(),
            days: days_s.to_owned(),
        })?;

        let (start_s, end_s) = range_s
            .split_once('-')
            .filter(|(a, b)| is_time_shaped(a) && is_time_shaped(b))
            .ok_or_else(|| WindowError::TimeRange {
                input: owned(),
                range: range_s.to_owned(),
            })?;
        let minutes = |s: &str| {
            time_minutes(s).ok_or_else(|| WindowError::Time {
                input: owned(),
                time: s.to_owned(),
            })
        };
        let (start, end) = (minutes(start_s)?, minutes(end_s)?);
        if start == DAY_MINUTES {
            return Err(WindowError::StartAt24 { input: owned() });
        }

        let tz = match tz_s {
            None => Tz::UTC,
            Some(name) => name.parse::<Tz>().map_err(|_| WindowError::TimeZone {
                input: owned(),
                tz: name.to_owned(),
            })?,
        };

        Ok(Self {
            days,
            start,
            end,
            tz,
        })
    }
}

impl fmt::Display for KeepWarmWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.days == 0x7f {
            f.write_str("daily")?;
        } else {
            // Start at the first day (from Monday) whose previous day is not in the set,
            // so a run that wraps past Sunday is written as one range ("Sat-Mon").
            let first = (0u32..7)
                .find(|&d| self.has_day(d) && !self.has_day((d + 6) % 7))
                .unwrap_or(0);
            let mut runs: Vec<(u32, u32)> = Vec::new();
            for offset in 0..7 {
                let d = (first + offset) % 7;
                if !self.has_day(d) {
                    continue;
                }
                match runs.last_mut() {
                    Some((_, last)) if (*last + 1) % 7 == d => *last = d,
                    _ => runs.push((d, d)),
                }
            }
            for (i, (from, to)) in runs.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                f.write_str(DAY_ABBREVS[*from as usize])?;
                if from != to {
                    write!(f, "-{}", DAY_ABBREVS[*to as usize])?;
                }
            }
        }
        write!(
            f,
            " {:02}:{:02}-{:02}:{:02} {}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60,
            self.tz.name()
        )
    }
}

impl Serialize for KeepWarmWindow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeepWarmWindow {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromStrVisitor::new(
            "a keep-warm window such as \"Mon-Fri 08:00-18:00 Europe/Berlin\"",
        ))
    }
}

/// When an endpoint's idle compute is suspended.
///
/// In TOML (an `[endpoints.NAME]` table uses the same keys):
///
/// ```toml
/// suspend_timeout = "10m"          # or "never"; default "5m"
/// keep_warm = ["Mon-Fri 08:00-18:00 Europe/Berlin"]   # default: none
/// ```
///
/// Both keys are optional; unknown keys are an error.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutosuspendPolicy {
    /// Idle time (no client connections) after which the compute is stopped, unless a
    /// keep-warm window is open. Default 5 minutes.
    pub suspend_timeout: SuspendTimeout,
    /// Periods during which the compute is never suspended for being idle. Default none.
    pub keep_warm: Vec<KeepWarmWindow>,
}

impl AutosuspendPolicy {
    /// The first keep-warm window (in configuration order) that contains `at`, or `None`
    /// if no window is open, in which case the normal suspend timeout applies.
    pub fn keep_warm_at(&self, at: DateTime<Utc>) -> Option<&KeepWarmWindow> {
        self.keep_warm.iter().find(|w| w.contains(at))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use chrono::TimeZone;

    use super::*;

    fn w(s: &str) -> KeepWarmWindow {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    /// A UTC instant; 2024-06-03 and 2024-01-01 are Mondays.
    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn parse_table() {
        // (input, days bitmask, start minutes, end minutes, zone)
        let cases: [(&str, u8, u16, u16, Tz); 11] = [
            (
                "Mon-Fri 08:00-18:00 Europe/Berlin",
                0b001_1111,
                480,
                1080,
                Tz::Europe__Berlin,
            ),
            ("Mon-Fri 08:00-18:00", 0b001_1111, 480, 1080, Tz::UTC),
            ("mon 00:00-24:00", 0b000_0001, 0, 1440, Tz::UTC),
            ("Monday 9:30-10:00", 0b000_0001, 570, 600, Tz::UTC),
            ("SUNDAY 10:00-11:00", 0b100_0000, 600, 660, Tz::UTC),
            ("Fri-Mon 22:00-06:00", 0b111_0001, 1320, 360, Tz::UTC),
            ("Mon,Wed,Fri 12:00-13:00", 0b001_0101, 720, 780, Tz::UTC),
            ("Mon,Thu-Sat 12:00-13:00", 0b011_1001, 720, 780, Tz::UTC),
            (
                "daily 07:00-07:30 America/New_York",
                0x7f,
                420,
                450,
                Tz::America__New_York,
            ),
            ("*   07:00-07:30", 0x7f, 420, 450, Tz::UTC),
            ("Tue-Tue 07:00-07:30", 0b000_0010, 420, 450, Tz::UTC),
        ];
        for (input, days, start, end, tz) in cases {
            let got = w(input);
            assert_eq!(
                got,
                KeepWarmWindow {
                    days,
                    start,
                    end,
                    tz
                },
                "input {input:?}"
            );
        }
    }

    #[test]
    fn parse_errors() {
        let cases = [
            (
                "Mon-Fri 8-18",
                "\"Mon-Fri 8-18\" is not a keep-warm window: \"8-18\" is not a time range like 08:00-18:00",
            ),
            (
                "Mon-Fri 08:00-18:00 Mars/Olympus",
                "\"Mon-Fri 08:00-18:00 Mars/Olympus\" is not a keep-warm window: \"Mars/Olympus\" is not an IANA time zone",
            ),
            (
                "Mo-Fr 08:00-18:00",
                "\"Mo-Fr 08:00-18:00\" is not a keep-warm window: \"Mo-Fr\" is not a set of days (use a day like Mon, a range like Mon-Fri, a list like Mon,Wed,Fri, or daily)",
            ),
            (
                "Mon-Fri 08:00-25:00",
                "\"Mon-Fri 08:00-25:00\" is not a keep-warm window: \"25:00\" is not a time between 00:00 and 24:00",
            ),
            (
                "Mon 24:00-06:00",
                "\"Mon 24:00-06:00\" is not a keep-warm window: a window cannot start at 24:00 (use 00:00 of the next day)",
            ),
            (
                "08:00-18:00",
                "\"08:00-18:00\" is not a keep-warm window: expected \"<days> <HH:MM>-<HH:MM> [time zone]\", like \"Mon-Fri 08:00-18:00 Europe/Berlin\"",
            ),
        ];
        for (input, want) in cases {
            let err = input.parse::<KeepWarmWindow>().unwrap_err();
            assert_eq!(err.to_string(), want, "input {input:?}");
        }

        // Each of these must fail, whatever the exact message.
        for bad in [
            "",
            "Mon 08:00-18:00 UTC extra",
            "Mon,,Wed 08:00-18:00",
            "Mon, Wed 08:00-18:00",
            "Mon 08:60-09:00",
            "Mon 24:30-24:30",
            "Mon 08:00",
            "Mon 08:00-",
            "Mon 080:00-09:00",
            "Mon 08:00-18:00 europe/berlin",
        ] {
            assert!(bad.parse::<KeepWarmWindow>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn contains_weekday_boundaries() {
        let office = w("Mon-Fri 08:00-18:00");
        assert!(office.contains(utc(2024, 6, 3, 8, 0))); // Mon 08:00, start inclusive
        assert!(office.contains(utc(2024, 6, 7, 17, 59))); // Fri 17:59
        assert!(!office.contains(utc(2024, 6, 7, 18, 0))); // Fri 18:00, end exclusive
        assert!(!office.contains(utc(2024, 6, 3, 7, 59))); // Mon 07:59
        assert!(!office.contains(utc(2024, 6, 8, 12, 0))); // Sat noon
        assert!(!office.contains(utc(2024, 6, 9, 12, 0))); // Sun noon
    }

    #[test]
    fn contains_overnight_belongs_to_start_day() {
        let fri_night = w("Fri 22:00-06:00");
        assert!(!fri_night.contains(utc(2024, 6, 7, 21, 59))); // Fri 21:59
        assert!(fri_night.contains(utc(2024, 6, 7, 22, 0))); // Fri 22:00
        assert!(fri_night.contains(utc(2024, 6, 8, 5, 59))); // Sat 05:59
        assert!(!fri_night.contains(utc(2024, 6, 8, 6, 0))); // Sat 06:00
        assert!(!fri_night.contains(utc(2024, 6, 8, 23, 0))); // Sat 23:00: not Saturday's
        assert!(!fri_night.contains(utc(2024, 6, 7, 3, 0))); // Fri 03:00: Thursday's night

        // Sun night wraps into Monday.
        let sun_night = w("Sun 23:00-01:00");
        assert!(sun_night.contains(utc(2024, 6, 3, 0, 30))); // Mon 00:30
        assert!(!sun_night.contains(utc(2024, 6, 4, 0, 30))); // Tue 00:30

        // Equal start and end: a full 24 hours from the start.
        let full = w("Mon 08:00-08:00");
        assert!(full.contains(utc(2024, 6, 4, 7, 59))); // Tue 07:59
        assert!(!full.contains(utc(2024, 6, 4, 8, 0))); // Tue 08:00
    }

    #[test]
    fn contains_until_midnight_with_24_00() {
        let evening = w("Mon 18:00-24:00");
        assert!(evening.contains(utc(2024, 6, 3, 23, 59))); // Mon 23:59
        assert!(evening.contains(Utc.with_ymd_and_hms(2024, 6, 3, 23, 59, 59).unwrap()));
        assert!(!evening.contains(utc(2024, 6, 4, 0, 0))); // Tue 00:00
        assert!(!evening.contains(utc(2024, 6, 3, 17, 59)));

        let all_day = w("Wed 00:00-24:00");
        assert!(all_day.contains(utc(2024, 6, 5, 0, 0)));
        assert!(all_day.contains(utc(2024, 6, 5, 23, 59)));
        assert!(!all_day.contains(utc(2024, 6, 4, 23, 59)));
        assert!(!all_day.contains(utc(2024, 6, 6, 0, 0)));
    }

    #[test]
    fn contains_follows_dst_in_berlin() {
        let berlin = w("Mon-Fri 08:00-18:00 Europe/Berlin");
        // Summer (CEST, UTC+2): 08:00 local = 06:00 UTC.
        assert!(!berlin.contains(utc(2024, 6, 3, 5, 59)));
        assert!(berlin.contains(utc(2024, 6, 3, 6, 0)));
        assert!(berlin.contains(utc(2024, 6, 3, 15, 59)));
        assert!(!berlin.contains(utc(2024, 6, 3, 16, 0)));
        // Winter (CET, UTC+1): 08:00 local = 07:00 UTC.
        assert!(!berlin.contains(utc(2024, 1, 8, 6, 30)));
        assert!(berlin.contains(utc(2024, 1, 8, 7, 0)));
        assert!(berlin.contains(utc(2024, 1, 8, 16, 30)));
        assert!(!berlin.contains(utc(2024, 1, 8, 17, 0)));
        // Sunday 23:30 UTC in summer is already Monday 01:30 in Berlin: the local weekday
        // decides, so an all-Monday window matches and an all-Sunday one doesn't.
        assert!(w("Mon 00:00-24:00 Europe/Berlin").contains(utc(2024, 6, 2, 23, 30)));
        assert!(!w("Sun 00:00-24:00 Europe/Berlin").contains(utc(2024, 6, 2, 23, 30)));
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        let cases = [
            (
                "Mon-Fri 08:00-18:00 Europe/Berlin",
                "Mon-Fri 08:00-18:00 Europe/Berlin",
            ),
            ("monday 9:05-17:00", "Mon 09:05-17:00 UTC"),
            ("Mon,Tue,Wed,Thu,Fri 08:00-18:00", "Mon-Fri 08:00-18:00 UTC"),
            ("Fri-Mon 22:00-06:00", "Fri-Mon 22:00-06:00 UTC"),
            ("Sun,Sat 10:00-24:00", "Sat-Sun 10:00-24:00 UTC"),
            ("Mon,Wed,Fri 12:00-13:00", "Mon,Wed,Fri 12:00-13:00 UTC"),
            ("Sun,Mon,Wed 12:00-13:00", "Wed,Sun-Mon 12:00-13:00 UTC"),
            ("* 00:00-24:00", "daily 00:00-24:00 UTC"),
            ("Mon-Sun 01:00-02:00", "daily 01:00-02:00 UTC"),
        ];
        for (input, canonical) in cases {
            let parsed = w(input);
            assert_eq!(parsed.to_string(), canonical, "input {input:?}");
            assert_eq!(w(canonical), parsed, "canonical {canonical:?}");
        }
    }

    #[test]
    fn window_serde() {
        let window = w("Mon-Fri 08:00-18:00 Europe/Berlin");
        let json = serde_json::to_string(&window).unwrap();
        assert_eq!(json, "\"Mon-Fri 08:00-18:00 Europe/Berlin\"");
        assert_eq!(
            serde_json::from_str::<KeepWarmWindow>(&json).unwrap(),
            window
        );
        let err = serde_json::from_str::<KeepWarmWindow>("\"Mon-Fri 8-18\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("is not a time range like 08:00-18:00"),
            "{err}"
        );
    }

    #[test]
    fn policy_default_and_keep_warm_at() {
        let default = AutosuspendPolicy::default();
        assert_eq!(
            default.suspend_timeout,
            SuspendTimeout::After(Duration::from_secs(300))
        );
        assert!(default.keep_warm.is_empty());
        assert_eq!(default.keep_warm_at(utc(2024, 6, 3, 12, 0)), None);

        let policy = AutosuspendPolicy {
            suspend_timeout: SuspendTimeout::Never,
            keep_warm: vec![w("Mon 08:00-12:00"), w("Mon-Fri 00:00-24:00")],
        };
        assert_eq!(
            policy.keep_warm_at(utc(2024, 6, 3, 9, 0)),
            Some(&policy.keep_warm[0])
        );
        assert_eq!(
            policy.keep_warm_at(utc(2024, 6, 3, 13, 0)),
            Some(&policy.keep_warm[1])
        );
        assert_eq!(policy.keep_warm_at(utc(2024, 6, 8, 9, 0)), None);
    }

    #[test]
    fn policy_serde() {
        let policy: AutosuspendPolicy = serde_json::from_str(
            r#"{"suspend_timeout": "never", "keep_warm": ["daily 09:00-10:00"]}"#,
        )
        .unwrap();
        assert_eq!(policy.suspend_timeout, SuspendTimeout::Never);
        assert_eq!(policy.keep_warm, vec![w("daily 09:00-10:00")]);
        let partial: AutosuspendPolicy = serde_json::from_str(r#"{"keep_warm": []}"#).unwrap();
        assert_eq!(partial, AutosuspendPolicy::default());
        let err =
            serde_json::from_str::<AutosuspendPolicy>(r#"{"suspend_timout": "1m"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
