//! How the CLI shows times.

use cctv_common::config::Config;
use jiff::tz::TimeZone;

/// `YYYY-MM-DD HH:MM:SS.mmm+hh:mm` of `ms` since the epoch in `tz`.
pub(crate) fn format_ms(ms: i64, tz: &TimeZone) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t.to_zoned(tz.clone()).strftime("%Y-%m-%d %H:%M:%S%.3f%:z").to_string(),
        Err(_) => format!("t{ms}"),
    }
}

/// The site's time zone (`record.timezone`), in which the CLI shows times.
pub(crate) fn site_zone(config: &Config) -> TimeZone {
    cctv_common::timefmt::zone(&config.record.timezone).unwrap_or(TimeZone::UTC)
}
