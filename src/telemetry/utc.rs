//! The log lines' timestamp: UTC, RFC 3339 with microseconds (`2026-11-24T07:56:48.217826Z`),
//! as tracing-subscriber's `SystemTime` timer writes it, without a `fmt` call per field.

use std::fmt::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// The clock of the text and JSON lines.
#[derive(Debug, Clone, Copy, Default)]
pub struct Utc;

/// The last second [`write_rfc3339`] handles itself: 9999-12-31T23:59:59Z.
const LAST_FOUR_DIGIT_YEAR: u64 = 253_402_300_799;

impl FormatTime for Utc {
    fn format_time(&self, out: &mut Writer<'_>) -> fmt::Result {
        match write_rfc3339(out, SystemTime::now()) {
            // A clock before 1970 or past 9999: the library's timer knows those formats.
            Err(OutOfRange) => tracing_subscriber::fmt::time::SystemTime.format_time(out),
            Ok(written) => written,
        }
    }
}

pub(super) struct OutOfRange;

/// `at` in RFC 3339 with microseconds (truncated, as the library does).
pub(super) fn write_rfc3339(
    out: &mut impl Write,
    at: SystemTime,
) -> Result<fmt::Result, OutOfRange> {
    let since = at.duration_since(UNIX_EPOCH).map_err(|_| OutOfRange)?;
    let seconds = since.as_secs();
    if seconds > LAST_FOUR_DIGIT_YEAR {
        return Err(OutOfRange);
    }
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let of_day = seconds % 86_400;
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    digits(&mut text[0..4], year);
    digits(&mut text[5..7], month);
    digits(&mut text[8..10], day);
    digits(&mut text[11..13], of_day / 3600);
    digits(&mut text[14..16], of_day % 3600 / 60);
    digits(&mut text[17..19], of_day % 60);
    digits(&mut text[20..26], u64::from(since.subsec_micros()));
    let text = std::str::from_utf8(&text).expect("only ASCII digits and separators");
    Ok(out.write_str(text))
}

/// Zero-padded decimal digits of `value`, filling `into`.
fn digits(into: &mut [u8], mut value: u64) {
    for slot in into.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`, for
/// days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let shifted = days + 719_468; // days since 0000-03-01
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(seconds: u64, nanos: u32) -> String {
        let mut text = String::new();
        let time = UNIX_EPOCH + Duration::new(seconds, nanos);
        assert!(write_rfc3339(&mut text, time).is_ok_and(|written| written.is_ok()));
        text
    }

    #[test]
    fn instants_are_written_in_the_library_s_rfc_3339_form() {
        // Expected values from Python's datetime (UTC).
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000000Z");
        assert_eq!(at(951_868_799, 500_000_000), "2000-02-29T23:59:59.500000Z");
        assert_eq!(at(1_330_473_600, 0), "2012-02-29T00:00:00.000000Z");
        assert_eq!(
            at(1_795_000_000, 123_456_789),
            "2026-11-18T11:06:40.123456Z"
        );
        assert_eq!(at(4_102_444_800, 999), "2100-01-01T00:00:00.000000Z");
        assert_eq!(
            at(LAST_FOUR_DIGIT_YEAR, 999_999_999),
            "9999-12-31T23:59:59.999999Z"
        );
    }

    #[test]
    fn now_has_the_shape_of_the_library_s_timer() {
        let mut ours = String::new();
        let mut library = String::new();
        assert!(Utc.format_time(&mut Writer::new(&mut ours)).is_ok());
        let timer = tracing_subscriber::fmt::time::SystemTime;
        assert!(timer.format_time(&mut Writer::new(&mut library)).is_ok());
        let shape = |text: &str| text.replace(|c: char| c.is_ascii_digit(), "0");
        assert_eq!(shape(&ours), shape(&library));
    }

    #[test]
    fn a_clock_out_of_range_is_left_to_the_library() {
        let mut text = String::new();
        let past = UNIX_EPOCH - Duration::from_secs(1);
        assert!(write_rfc3339(&mut text, past).is_err());
        let far = UNIX_EPOCH + Duration::from_secs(LAST_FOUR_DIGIT_YEAR + 1);
        assert!(write_rfc3339(&mut text, far).is_err());
        assert!(text.is_empty());
    }

    #[test]
    fn every_day_of_four_centuries_is_the_next_one() {
        // Walks 1970..2370 a day at a time: each date follows the last (month lengths, leap
        // years with the 100 and 400 rules).
        let mut last = civil_from_days(0);
        assert_eq!(last, (1970, 1, 1));
        for days in 1..146_097 {
            let (year, month, day) = civil_from_days(days);
            let leap = last.0 % 4 == 0 && (last.0 % 100 != 0 || last.0 % 400 == 0);
            let length = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            let expected = if last.2 < length[last.1 as usize - 1] {
                (last.0, last.1, last.2 + 1)
            } else if last.1 < 12 {
                (last.0, last.1 + 1, 1)
            } else {
                (last.0 + 1, 1, 1)
            };
            assert_eq!((year, month, day), expected, "day {days}");
            last = expected;
        }
    }
}
