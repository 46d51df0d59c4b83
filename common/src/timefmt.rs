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

#[cfg(test)]
mod tests {
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
