//! Wall-clock times in backup file names: `record.timezone` (`UTC`, `local`, or an IANA name).

use jiff::tz::TimeZone;

/// The configured time zone, or a message naming what is wrong.
pub fn zone(name: &str) -> Result<TimeZone, String> {
    match name {
        "UTC" | "utc" => Ok(TimeZone::UTC),
        "local" | "" => Ok(TimeZone::try_system().unwrap_or(TimeZone::UTC)),
        other => TimeZone::get(other).map_err(|e| format!("{other:?} is not a known time zone: {e}")),
    }
}

/// `YYYY-MM-DD_HH-MM-SS` of `ms` since the epoch in `tz` (the seed's backup file naming).
pub fn file_stamp(ms: i64, tz: &TimeZone) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t.to_zoned(tz.clone()).strftime("%Y-%m-%d_%H-%M-%S").to_string(),
        Err(_) => format!("t{ms}"),
    }
}

/// RFC 3339 with the zone's offset, for logs and tables.
pub fn rfc3339(ms: i64, tz: &TimeZone) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t.to_zoned(tz.clone()).strftime("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string(),
        Err(_) => format!("t{ms}"),
    }
}

/// Parses `90s`, `15m`, `2h`, `1d` (that long ago) or milliseconds since the epoch.
pub fn parse_time(text: &str, now: i64) -> Result<i64, String> {
    let t = text.trim();
    let bad = || format!("{text:?} is not a time: use 90s, 15m, 2h, 1d (ago) or ms since the epoch");
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit() && c != '.').ok_or_else(bad)?);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let ms = match unit {
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return Err(bad()),
    };
    Ok(now - (n * ms) as i64)
}

/// Like [`parse_time`], and also a wall-clock time of `tz` (the site's): `2026-12-07T14:00`,
/// `2026-12-07 14:00:30`, or with an offset (`2026-12-07T14:00:00+01:00`).
pub fn parse_time_in(text: &str, now: i64, tz: &TimeZone) -> Result<i64, String> {
    let t = text.trim();
    if let Ok(ms) = parse_time(t, now) {
        return Ok(ms);
    }
    if let Ok(ts) = t.parse::<jiff::Timestamp>() {
        return Ok(ts.as_millisecond());
    }
    match t.replacen(' ', "T", 1).parse::<jiff::civil::DateTime>() {
        Ok(dt) => dt.to_zoned(tz.clone()).map(|z| z.timestamp().as_millisecond()).map_err(|e| format!("{text:?}: {e}")),
        Err(_) => Err(format!(
            "{text:?} is not a time: use 2026-12-07T14:00 (site time), 90s, 15m, 2h, 1d (ago) or ms since the epoch"
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn site_times_and_offsets_parse_too() {
        let tz = jiff::tz::TimeZone::get("Europe/Paris").unwrap();
        // 14:00 in Paris in December is 13:00 UTC.
        let ms = super::parse_time_in("2026-12-07T14:00", 0, &tz).unwrap();
        assert_eq!(ms, "2026-12-07T13:00:00Z".parse::<jiff::Timestamp>().unwrap().as_millisecond());
        assert_eq!(super::parse_time_in("2026-12-07 14:00:00", 0, &tz), Ok(ms));
        assert_eq!(super::parse_time_in("2026-12-07T14:00:00+01:00", 0, &tz), Ok(ms));
        assert_eq!(super::parse_time_in("2h", 10_000_000, &tz), Ok(10_000_000 - 7_200_000));
        assert!(super::parse_time_in("yesterday", 0, &tz).unwrap_err().contains("site time"));
    }

    #[test]
    fn times_parse_relative_and_absolute() {
        assert_eq!(super::parse_time("90s", 100_000), Ok(10_000));
        assert_eq!(super::parse_time("2h", 10_000_000), Ok(10_000_000 - 7_200_000));
        assert_eq!(super::parse_time("1700000000000", 0), Ok(1_700_000_000_000));
        assert!(super::parse_time("yesterday", 0).unwrap_err().contains("yesterday"));
        assert!(super::parse_time("5w", 0).is_err());
    }

    use super::*;

    #[test]
    fn stamps_follow_the_zone() {
        let ms = 1_764_000_000_000; // 2025-11-24T16:00:00Z
        assert_eq!(file_stamp(ms, &zone("UTC").unwrap()), "2025-11-24_16-00-00");
        assert_eq!(file_stamp(ms, &zone("Asia/Seoul").unwrap()), "2025-11-25_01-00-00");
        assert!(zone("Mars/Olympus").unwrap_err().contains("Mars/Olympus"));
        assert_eq!(rfc3339(ms + 5, &zone("UTC").unwrap()), "2025-11-24T16:00:00.005+00:00");
    }
}
