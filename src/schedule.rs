//! When to record: daily windows (clock times or sunrise/sunset from the deployment's location,
//! possibly crossing midnight) and the grid of files (`interval` start to start, `duration` long,
//! anchored at local midnight in the configured time zone). Every function takes the instant it
//! is asked about; nothing here reads the clock or sleeps.
//!
//! A window is an interval of instants `[start, end)`. One whose end falls at or before its start
//! on the same day ends on the next day. This is where acoupi went wrong: it built a window
//! 06:00-18:00 as 06:00-midnight plus midnight-18:00, which is every hour of the day.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::spec::Location;
use crate::spec::recorder::{RecorderSpec, SunEvent, TimeOfDay, Window};

/// What the recorder should do at an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Record; the current file must end before `end` (exclusive). `slot_start` is the start of
    /// the file's slot on the interval grid.
    Record {
        /// Start of the current file's slot on the interval grid.
        slot_start: Timestamp,
        /// When the current file must end: `duration` after its slot start, cut at the slot's end or
        /// the window's end.
        end: Timestamp,
    },
    /// Do not record until `until` (`None`: no window ever opens again, e.g. a sunrise window
    /// in a polar night that lasts beyond the search horizon).
    Idle {
        /// When recording may start: the next slot or window start (`None`: no window within
        /// the search horizon).
        until: Option<Timestamp>,
    },
}

/// The recording schedule of a recorder spec, ready to be asked about instants.
#[derive(Clone, Debug)]
pub struct Schedule {
    tz: TimeZone,
    duration: SignedDuration,
    interval: SignedDuration,
    windows: Vec<Window>,
    location: Option<(f64, f64)>,
}

/// How far ahead to search for the next window (sun windows may not occur for months near the poles).
const SEARCH_DAYS: i32 = 370;

impl Schedule {
    /// The schedule of `spec` (time zone, `duration`, `interval`, windows) at `location`, which sun
    /// windows need. `interval` is never shorter than `duration`.
    pub fn new(spec: &RecorderSpec, location: Option<&Location>) -> Self {
        let duration = SignedDuration::try_from(spec.duration.as_std())
            .unwrap_or(SignedDuration::from_secs(60));
        let interval =
            SignedDuration::try_from(spec.effective_interval().as_std()).unwrap_or(duration);
        Self {
            tz: spec.time_zone(),
            duration: duration.max(SignedDuration::from_millis(1)),
            interval: interval.max(duration).max(SignedDuration::from_millis(1)),
            windows: spec.windows.clone(),
            location: location.map(|l| (l.latitude.value(), l.longitude.value())),
        }
    }

    /// The time zone of the windows and of the grid (`spec.recorder.timezone`).
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    fn local_date(&self, t: Timestamp) -> Date {
        t.to_zoned(self.tz.clone()).date()
    }

    /// The instant a time of day falls on for local date `date`; `None` when the sun does not
    /// rise or set that day, or when there is no location.
    fn resolve(&self, date: Date, time: &TimeOfDay) -> Option<Timestamp> {
        match *time {
            TimeOfDay::Clock { minute_of_day } => {
                let civil = date.at((minute_of_day / 60) as i8, (minute_of_day % 60) as i8, 0, 0);
                local_instant(&self.tz, civil)
            }
            TimeOfDay::Solar {
                event,
                offset_seconds,
            } => {
                let (lat, lon) = self.location?;
                let at = sun_event(date, lat, lon, event)?;
                at.checked_add(SignedDuration::from_secs(i64::from(offset_seconds)))
                    .ok()
            }
        }
    }

    /// The instance of `window` that starts on local date `date`.
    fn instance(&self, date: Date, window: &Window) -> Option<(Timestamp, Timestamp)> {
        let start = self.resolve(date, &window.start)?;
        // Clock times decide by their readings whether a window ends the next day: on a DST day
        // the instants of 01:30 and 02:30 may coincide, which is an empty window, not 24 hours.
        let crosses_midnight = match (&window.start, &window.end) {
            (TimeOfDay::Clock { minute_of_day: s }, TimeOfDay::Clock { minute_of_day: e }) => {
                e <= s
            }
            _ => self.resolve(date, &window.end)? <= start,
        };
        let end_date = if crosses_midnight {
            date.tomorrow().ok()?
        } else {
            date
        };
        let end = self.resolve(end_date, &window.end)?;
        (end > start).then_some((start, end))
    }

    /// Window instances that start on the days around `t`, enough to cover `t` and the hours after it.
    fn instances_near(
        &self,
        t: Timestamp,
        days_before: i32,
        days_after: i32,
    ) -> Vec<(Timestamp, Timestamp)> {
        let date = self.local_date(t);
        let mut out = Vec::new();
        for offset in -days_before..=days_after {
            let Ok(day) = date.checked_add(jiff::Span::new().days(offset)) else {
                continue;
            };
            for w in &self.windows {
                out.extend(self.instance(day, w));
            }
        }
        out
    }

    /// Whether `t` lies inside a window (always, when there are no windows).
    pub fn in_window(&self, t: Timestamp) -> bool {
        self.window_end(t).is_some()
    }

    /// The end of the window (or of overlapping windows) containing `t`; `Timestamp::MAX` when
    /// recording all day; `None` outside every window.
    pub fn window_end(&self, t: Timestamp) -> Option<Timestamp> {
        if self.windows.is_empty() {
            return Some(Timestamp::MAX);
        }
        let instances = self.instances_near(t, 2, 1);
        let mut end = instances
            .iter()
            .filter(|(s, e)| *s <= t && t < *e)
            .map(|(_, e)| *e)
            .max()?;
        // Overlapping or touching windows join into one.
        while let Some(later) = instances
            .iter()
            .filter(|(s, e)| *s <= end && end < *e)
            .map(|(_, e)| *e)
            .max()
        {
            end = later;
        }
        Some(end)
    }

    /// The first instant at or after `t` inside a window.
    pub fn next_window_start(&self, t: Timestamp) -> Option<Timestamp> {
        if self.window_end(t).is_some() {
            return Some(t);
        }
        // Look a few days at a time so that ordinary schedules cost a handful of sun computations.
        let mut from = -2;
        while from < SEARCH_DAYS {
            let date = self.local_date(t);
            let mut best: Option<Timestamp> = None;
            for offset in from..from + 4 {
                let Ok(day) = date.checked_add(jiff::Span::new().days(offset)) else {
                    continue;
                };
                for w in &self.windows {
                    if let Some((s, _)) = self.instance(day, w)
                        && s >= t
                    {
                        best = Some(best.map_or(s, |b| b.min(s)));
                    }
                }
            }
            if best.is_some() {
                return best;
            }
            from += 4;
        }
        None
    }

    /// The slot of the interval grid containing `t`: `(slot_start, slot_end)`. The grid starts
    /// again at every local midnight, so the last slot of a day may be shorter.
    pub fn slot(&self, t: Timestamp) -> (Timestamp, Timestamp) {
        let date = self.local_date(t);
        let midnight = start_of_day(date, &self.tz).unwrap_or(t);
        let next_midnight = date
            .tomorrow()
            .ok()
            .and_then(|d| start_of_day(d, &self.tz))
            .unwrap_or(Timestamp::MAX);
        let elapsed = t.duration_since(midnight).as_nanos().max(0);
        let step = self.interval.as_nanos().max(1);
        let k = elapsed / step;
        let start = Timestamp::from_nanosecond(midnight.as_nanosecond() + k * step).unwrap_or(t);
        let end =
            Timestamp::from_nanosecond(start.as_nanosecond() + step).unwrap_or(Timestamp::MAX);
        (start, end.min(next_midnight))
    }

    /// What to do at `t`: record until a given instant, or wait until a given instant.
    pub fn segment_at(&self, t: Timestamp) -> Segment {
        let Some(window_end) = self.window_end(t) else {
            return Segment::Idle {
                until: self.next_window_start(t),
            };
        };
        let (slot_start, slot_end) = self.slot(t);
        let recording_end =
            Timestamp::from_nanosecond(slot_start.as_nanosecond() + self.duration.as_nanos())
                .unwrap_or(slot_end)
                .min(slot_end);
        if t < recording_end {
            Segment::Record {
                slot_start,
                end: recording_end.min(window_end),
            }
        } else {
            Segment::Idle {
                until: Some(slot_end.min(window_end)),
            }
        }
    }
}

/// The instant a local reading `civil` stands for. A reading that occurs twice (clocks go back)
/// is its first occurrence; one that does not occur (clocks go forward) is the instant the clocks
/// jump, the first instant whose reading is past it.
fn local_instant(tz: &TimeZone, civil: jiff::civil::DateTime) -> Option<Timestamp> {
    use jiff::tz::AmbiguousOffset;
    let ambiguous = tz.to_ambiguous_timestamp(civil);
    match ambiguous.offset() {
        AmbiguousOffset::Gap { after, .. } => {
            let before_gap = after.to_timestamp(civil).ok()?;
            tz.following(before_gap).next().map(|t| t.timestamp())
        }
        _ => ambiguous.compatible().ok(),
    }
}

fn start_of_day(date: Date, tz: &TimeZone) -> Option<Timestamp> {
    date.to_zoned(tz.clone()).ok().map(|z| z.timestamp())
}

// ---------------------------------------------------------------------------------------------
// Sunrise and sunset: NOAA's solar calculator equations (Meeus), good to about a minute for
// latitudes within ±72°. `date` is the local date; the result is the instant of the event
// nearest that date's noon at `longitude`.

/// The instant of sunrise or sunset on `date` at `latitude`/`longitude` (degrees, east positive),
/// `None` when the sun stays above or below the horizon all day.
pub fn sun_event(date: Date, latitude: f64, longitude: f64, event: SunEvent) -> Option<Timestamp> {
    let jd = julian_day(date);
    let rising = event == SunEvent::Sunrise;
    // Two passes: the second evaluates the sun's position at the first estimate.
    let first = sun_event_minutes_utc(rising, jd, latitude, longitude)?;
    let minutes =
        sun_event_minutes_utc(rising, jd + first / 1440.0, latitude, longitude).unwrap_or(first);
    let midnight_utc = date.to_zoned(TimeZone::UTC).ok()?.timestamp();
    midnight_utc
        .checked_add(SignedDuration::from_secs_f64(minutes * 60.0))
        .ok()
}

fn julian_day(date: Date) -> f64 {
    let (mut y, mut m, d) = (
        i32::from(date.year()),
        i32::from(date.month()),
        f64::from(date.day()),
    );
    if m <= 2 {
        y -= 1;
        m += 12;
    }
    let a = (f64::from(y) / 100.0).floor();
    let b = 2.0 - a + (a / 4.0).floor();
    (365.25 * f64::from(y + 4716)).floor() + (30.6001 * f64::from(m + 1)).floor() + d + b - 1524.5
}

fn sun_event_minutes_utc(rising: bool, jd: f64, latitude: f64, longitude: f64) -> Option<f64> {
    let t = (jd - 2_451_545.0) / 36_525.0;
    let eq_time = equation_of_time(t);
    let declination = sun_declination(t);
    let lat = latitude.to_radians();
    let dec = declination.to_radians();
    let cos_ha = 90.833f64.to_radians().cos() / (lat.cos() * dec.cos()) - lat.tan() * dec.tan();
    if !(-1.0..=1.0).contains(&cos_ha) {
        return None;
    }
    let mut hour_angle = cos_ha.acos().to_degrees();
    if !rising {
        hour_angle = -hour_angle;
    }
    Some(720.0 - 4.0 * (longitude + hour_angle) - eq_time)
}

fn geom_mean_long_sun(t: f64) -> f64 {
    (280.46646 + t * (36000.76983 + t * 0.0003032)).rem_euclid(360.0)
}

fn geom_mean_anomaly_sun(t: f64) -> f64 {
    357.52911 + t * (35999.05029 - 0.0001537 * t)
}

fn eccentricity_earth_orbit(t: f64) -> f64 {
    0.016708634 - t * (0.000042037 + 0.0000001267 * t)
}

fn obliquity_correction(t: f64) -> f64 {
    let seconds = 21.448 - t * (46.8150 + t * (0.00059 - t * 0.001813));
    let mean = 23.0 + (26.0 + seconds / 60.0) / 60.0;
    mean + 0.00256 * (125.04 - 1934.136 * t).to_radians().cos()
}

fn sun_declination(t: f64) -> f64 {
    let m = geom_mean_anomaly_sun(t).to_radians();
    let center = m.sin() * (1.914602 - t * (0.004817 + 0.000014 * t))
        + (2.0 * m).sin() * (0.019993 - 0.000101 * t)
        + (3.0 * m).sin() * 0.000289;
    let true_long = geom_mean_long_sun(t) + center;
    let apparent_long = true_long - 0.00569 - 0.00478 * (125.04 - 1934.136 * t).to_radians().sin();
    (obliquity_correction(t).to_radians().sin() * apparent_long.to_radians().sin())
        .asin()
        .to_degrees()
}

/// Minutes by which apparent solar time leads mean solar time.
fn equation_of_time(t: f64) -> f64 {
    let epsilon = obliquity_correction(t).to_radians();
    let l0 = geom_mean_long_sun(t).to_radians();
    let e = eccentricity_earth_orbit(t);
    let m = geom_mean_anomaly_sun(t).to_radians();
    let y = (epsilon / 2.0).tan().powi(2);
    let value = y * (2.0 * l0).sin() - 2.0 * e * m.sin() + 4.0 * e * y * m.sin() * (2.0 * l0).cos()
        - 0.5 * y * y * (4.0 * l0).sin()
        - 1.25 * e * e * (2.0 * m).sin();
    value.to_degrees() * 4.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::HumanDuration;
    use crate::spec::recorder::TimeZoneName;

    fn spec(tz: &str, duration: u64, interval: u64, windows: &[(&str, &str)]) -> RecorderSpec {
        RecorderSpec {
            duration: HumanDuration::from_secs(duration),
            interval: Some(HumanDuration::from_secs(interval)),
            timezone: Some(TimeZoneName::try_from(tz.to_string()).unwrap()),
            windows: windows
                .iter()
                .map(|(s, e)| Window {
                    start: s.parse().unwrap(),
                    end: e.parse().unwrap(),
                })
                .collect(),
            ..RecorderSpec::default()
        }
    }

    fn at(tz: &str, civil: &str) -> Timestamp {
        let dt: jiff::civil::DateTime = civil.parse().unwrap();
        dt.to_zoned(TimeZone::get(tz).unwrap()).unwrap().timestamp()
    }

    fn london() -> Location {
        Location {
            latitude: 51.5074.try_into().unwrap(),
            longitude: (-0.1278).try_into().unwrap(),
        }
    }

    #[test]
    fn a_day_window_does_not_record_at_night_acoupis_bug() {
        let s = Schedule::new(&spec("Europe/London", 60, 60, &[("06:00", "18:00")]), None);
        let tz = "Europe/London";
        assert!(!s.in_window(at(tz, "2026-06-01T23:00")));
        assert!(!s.in_window(at(tz, "2026-06-01T03:00")));
        assert!(!s.in_window(at(tz, "2026-06-01T05:59:59")));
        assert!(s.in_window(at(tz, "2026-06-01T06:00")));
        assert!(s.in_window(at(tz, "2026-06-01T12:00")));
        assert!(!s.in_window(at(tz, "2026-06-01T18:00")));
        assert_eq!(
            s.segment_at(at(tz, "2026-06-01T23:00")),
            Segment::Idle {
                until: Some(at(tz, "2026-06-02T06:00"))
            }
        );
    }

    #[test]
    fn windows_cross_midnight() {
        let tz = "Europe/London";
        let s = Schedule::new(&spec(tz, 60, 60, &[("22:00", "02:00")]), None);
        for inside in [
            "2026-06-01T22:00",
            "2026-06-01T23:59:59",
            "2026-06-02T00:00",
            "2026-06-02T01:59",
        ] {
            assert!(s.in_window(at(tz, inside)), "{inside}");
        }
        for outside in ["2026-06-01T21:59", "2026-06-02T02:00", "2026-06-02T12:00"] {
            assert!(!s.in_window(at(tz, outside)), "{outside}");
        }
        assert_eq!(
            s.window_end(at(tz, "2026-06-01T23:30")),
            Some(at(tz, "2026-06-02T02:00"))
        );
        assert_eq!(
            s.window_end(at(tz, "2026-06-02T01:00")),
            Some(at(tz, "2026-06-02T02:00"))
        );
        assert_eq!(
            s.next_window_start(at(tz, "2026-06-02T03:00")),
            Some(at(tz, "2026-06-02T22:00"))
        );
    }

    #[test]
    fn touching_windows_join() {
        let tz = "UTC";
        let s = Schedule::new(
            &spec(tz, 60, 60, &[("20:00", "22:00"), ("22:00", "01:00")]),
            None,
        );
        assert_eq!(
            s.window_end(at(tz, "2026-01-10T21:00")),
            Some(at(tz, "2026-01-11T01:00"))
        );
    }

    #[test]
    fn sunrise_and_sunset_match_published_times() {
        // London, 2026-06-21: sunrise 04:43 BST, sunset 21:21 BST (timeanddate.com).
        let date = jiff::civil::date(2026, 6, 21);
        let (lat, lon) = (51.5074, -0.1278);
        let rise = sun_event(date, lat, lon, SunEvent::Sunrise).unwrap();
        let set = sun_event(date, lat, lon, SunEvent::Sunset).unwrap();
        let tz = "Europe/London";
        assert!(
            rise.duration_since(at(tz, "2026-06-21T04:43")).abs() < SignedDuration::from_mins(3),
            "{rise}"
        );
        assert!(
            set.duration_since(at(tz, "2026-06-21T21:21")).abs() < SignedDuration::from_mins(3),
            "{set}"
        );
        // Tokyo sunrise falls on the previous UTC day; the local date must still be right.
        let tokyo = sun_event(
            jiff::civil::date(2026, 12, 21),
            35.68,
            139.77,
            SunEvent::Sunrise,
        )
        .unwrap();
        assert!(
            tokyo
                .duration_since(at("Asia/Tokyo", "2026-12-21T06:47"))
                .abs()
                < SignedDuration::from_mins(3)
        );
        // Tromsø in midwinter: no sunrise at all.
        assert_eq!(
            sun_event(
                jiff::civil::date(2026, 12, 21),
                69.65,
                18.96,
                SunEvent::Sunrise
            ),
            None
        );
    }

    #[test]
    fn windows_around_sunrise() {
        let tz = "Europe/London";
        let s = Schedule::new(
            &spec(tz, 60, 60, &[("sunrise-30m", "sunrise+3h")]),
            Some(&london()),
        );
        let rise = sun_event(
            jiff::civil::date(2026, 6, 21),
            51.5074,
            -0.1278,
            SunEvent::Sunrise,
        )
        .unwrap();
        let before = rise - SignedDuration::from_mins(31);
        let start = rise - SignedDuration::from_mins(30);
        assert!(!s.in_window(before));
        assert!(s.in_window(start));
        assert!(s.in_window(rise + SignedDuration::from_mins(179)));
        assert!(!s.in_window(rise + SignedDuration::from_mins(180)));
        assert_eq!(s.next_window_start(before), Some(start));
        // From the evening before, the next start is that morning's.
        assert_eq!(s.next_window_start(at(tz, "2026-06-20T22:00")), Some(start));
    }

    #[test]
    fn polar_night_has_no_sun_window() {
        let loc = Location {
            latitude: 78.22.try_into().unwrap(),
            longitude: 15.65.try_into().unwrap(),
        };
        let s = Schedule::new(&spec("UTC", 60, 60, &[("sunrise", "sunset")]), Some(&loc));
        let t = at("UTC", "2026-12-01T12:00");
        assert!(!s.in_window(t));
        // The sun rises again in February in Svalbard.
        let next = s.next_window_start(t).unwrap();
        assert_eq!(next.to_zoned(TimeZone::UTC).month(), 2);
    }

    #[test]
    fn slots_start_on_the_grid_from_local_midnight() {
        let tz = "Europe/London";
        // 3 s every 10 s.
        let s = Schedule::new(&spec(tz, 3, 10, &[]), None);
        assert_eq!(
            s.segment_at(at(tz, "2026-06-01T10:00:11")),
            Segment::Record {
                slot_start: at(tz, "2026-06-01T10:00:10"),
                end: at(tz, "2026-06-01T10:00:13")
            }
        );
        assert_eq!(
            s.segment_at(at(tz, "2026-06-01T10:00:13")),
            Segment::Idle {
                until: Some(at(tz, "2026-06-01T10:00:20"))
            }
        );
        // Continuous: each file ends where the next begins.
        let c = Schedule::new(&spec(tz, 60, 60, &[]), None);
        let Segment::Record { end, .. } = c.segment_at(at(tz, "2026-06-01T10:00:30")) else {
            panic!()
        };
        assert_eq!(end, at(tz, "2026-06-01T10:01:00"));
        assert!(
            matches!(c.segment_at(end), Segment::Record { slot_start, .. } if slot_start == end)
        );
    }

    #[test]
    fn files_are_cut_at_the_window_end_and_the_day_end() {
        let tz = "UTC";
        let s = Schedule::new(&spec(tz, 600, 600, &[("06:00", "06:05")]), None);
        assert_eq!(
            s.segment_at(at(tz, "2026-06-01T06:01")),
            Segment::Record {
                slot_start: at(tz, "2026-06-01T06:00"),
                end: at(tz, "2026-06-01T06:05")
            }
        );
        // A 7-minute grid does not divide the day: the last slot ends at midnight.
        let g = Schedule::new(&spec(tz, 420, 420, &[]), None);
        let (_, end) = g.slot(at(tz, "2026-06-01T23:59"));
        assert_eq!(end, at(tz, "2026-06-02T00:00"));
    }

    #[test]
    fn daylight_saving_days_keep_the_window_in_local_time() {
        let tz = "Europe/London";
        // 2026-03-29: clocks go forward at 01:00 UTC.
        let s = Schedule::new(&spec(tz, 60, 60, &[("00:30", "03:00")]), None);
        assert!(s.in_window(at(tz, "2026-03-29T02:30")));
        assert!(!s.in_window(at(tz, "2026-03-29T03:00")));
    }

    fn utc(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    /// How long a schedule records between two instants, probing every minute.
    fn minutes_in_window(s: &Schedule, from: &str, to: &str) -> i64 {
        let (from, to) = (utc(from), utc(to));
        let mut t = from;
        let mut n = 0;
        while t < to {
            n += i64::from(s.in_window(t));
            t = t.checked_add(SignedDuration::from_mins(1)).unwrap();
        }
        n
    }

    #[test]
    fn a_window_in_the_spring_forward_gap_starts_when_the_clocks_jump() {
        // Europe/London 2026-03-29: 01:00 GMT becomes 02:00 BST; 01:30 does not exist. The window
        // opens when the clocks jump (01:00 UTC) and closes at 02:30 BST (01:30 UTC): 30 minutes,
        // never the whole day (the field report: 24 h recorded).
        let s = Schedule::new(&spec("Europe/London", 60, 60, &[("01:30", "02:30")]), None);
        assert_eq!(
            minutes_in_window(&s, "2026-03-28T12:00:00Z", "2026-03-30T12:00:00Z"),
            30 + 60
        );
        assert!(!s.in_window(utc("2026-03-29T00:59:00Z")));
        assert!(s.in_window(utc("2026-03-29T01:00:00Z")));
        assert!(!s.in_window(utc("2026-03-29T01:30:00Z")));
        assert!(!s.in_window(utc("2026-03-29T12:00:00Z")));
        assert_eq!(
            s.next_window_start(utc("2026-03-29T00:10:00Z")),
            Some(utc("2026-03-29T01:00:00Z"))
        );
        // Both ends inside the gap: no window that day.
        let empty = Schedule::new(&spec("Europe/London", 60, 60, &[("01:10", "01:50")]), None);
        assert_eq!(
            minutes_in_window(&empty, "2026-03-29T00:00:00Z", "2026-03-29T23:00:00Z"),
            0
        );
        // A window across midnight and the gap loses the skipped hour.
        let night = Schedule::new(&spec("Europe/London", 60, 60, &[("22:00", "04:00")]), None);
        assert_eq!(
            minutes_in_window(&night, "2026-03-28T12:00:00Z", "2026-03-29T12:00:00Z"),
            5 * 60
        );
    }

    #[test]
    fn a_window_over_the_repeated_hour_starts_at_its_first_occurrence() {
        // Europe/London 2026-10-25: 02:00 BST becomes 01:00 GMT; 01:00-02:00 happens twice. The
        // window starts at the first 01:30 (00:30 UTC) and ends at 02:30 GMT (02:30 UTC).
        let s = Schedule::new(&spec("Europe/London", 60, 60, &[("01:30", "02:30")]), None);
        assert_eq!(
            minutes_in_window(&s, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z"),
            120 + 60
        );
        assert!(s.in_window(utc("2026-10-25T00:30:00Z")));
        assert!(s.in_window(utc("2026-10-25T02:29:00Z")));
        assert!(!s.in_window(utc("2026-10-25T02:30:00Z")));
        let night = Schedule::new(&spec("Europe/London", 60, 60, &[("22:00", "04:00")]), None);
        assert_eq!(
            minutes_in_window(&night, "2026-10-24T12:00:00Z", "2026-10-25T12:00:00Z"),
            7 * 60
        );
    }

    #[test]
    fn slots_tile_dst_days_without_overlap() {
        for day in ["2026-03-29", "2026-10-25"] {
            let s = Schedule::new(&spec("Europe/London", 600, 600, &[]), None);
            let mut t = utc(&format!("{day}T00:00:00Z"));
            let end = t.checked_add(SignedDuration::from_hours(26)).unwrap();
            while t < end {
                let (start, slot_end) = s.slot(t);
                assert!(start <= t && t < slot_end, "{t}: {start}..{slot_end}");
                t = slot_end;
            }
        }
    }
}
