//! UTC timestamps in the shapes EM writes them.

/// A UTC instant split into calendar fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

impl Civil {
    /// Splits milliseconds since the Unix epoch (Howard Hinnant's `civil_from_days`).
    pub fn from_unix_ms(ms: i64) -> Civil {
        let days = ms.div_euclid(86_400_000);
        let rem = ms.rem_euclid(86_400_000);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: (rem / 3_600_000) as u32,
            minute: (rem / 60_000 % 60) as u32,
            second: (rem / 1000 % 60) as u32,
            millis: (rem % 1000) as u32,
        }
    }

    /// Milliseconds since the Unix epoch (Howard Hinnant's `days_from_civil`).
    pub fn to_unix_ms(self) -> i64 {
        let y = self.year - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400_000
            + i64::from(self.hour) * 3_600_000
            + i64::from(self.minute) * 60_000
            + i64::from(self.second) * 1000
            + i64::from(self.millis)
    }

    /// Parses a UTC date and time as the query service takes them
    /// (get_query_backupjobsession.md: `2025-08-14T12:31:30.389954Z`): also without
    /// the fraction, without the `Z`, or a date alone. `None` when malformed.
    pub fn parse_utc(s: &str) -> Option<i64> {
        let s = s.strip_suffix('Z').unwrap_or(s);
        let (date, time) = s.split_once('T').unwrap_or((s, "00:00:00"));
        let mut d = date.splitn(3, '-');
        let year: i64 = num(d.next()?, 4)?;
        let month: u32 = num(d.next()?, 2)?;
        let day: u32 = num(d.next()?, 2)?;
        let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
        let mut t = hms.splitn(3, ':');
        let hour: u32 = num(t.next()?, 2)?;
        let minute: u32 = num(t.next()?, 2)?;
        let second: u32 = num(t.next()?, 2)?;
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let millis = frac
            .bytes()
            .chain(std::iter::repeat(b'0'))
            .take(3)
            .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0'));
        let days_in_month = match month {
            2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            1..=12 => 31,
            _ => return None,
        };
        if day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        let c = Civil {
            year,
            month,
            day,
            hour,
            minute,
            second,
            millis,
        };
        Some(c.to_unix_ms())
    }

    /// `12/5/2024 9:41 AM`: a date as US Windows writes it, in job descriptions
    /// (jobs: `Created by SRV02\Administrator at 10/7/2014 6:02 AM.`).
    pub fn us(&self) -> String {
        let h12 = match self.hour % 12 {
            0 => 12,
            h => h,
        };
        let ampm = if self.hour < 12 { "AM" } else { "PM" };
        format!(
            "{}/{}/{} {}:{:02} {}",
            self.month, self.day, self.year, h12, self.minute, ampm
        )
    }

    /// `2025-10-20T20:04:07.267Z`: .NET's round-trip UTC form as EM writes it, with
    /// trailing zeros of the fraction dropped (`…:31.23Z`, sample 06) and no fraction
    /// at all for whole seconds.
    pub fn iso(&self) -> String {
        let mut s = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        );
        if self.millis != 0 {
            let frac = format!("{:03}", self.millis);
            s.push('.');
            s.push_str(frac.trim_end_matches('0'));
        }
        s.push('Z');
        s
    }

    /// `2025-10-20 20:04:07`, the time part of a VM restore point's name (sample 04).
    pub fn plain(&self) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `Oct  6 2025  1:59PM`, a restore point's name (samples 03, 06): day and hour
    /// padded with a space to two characters, 12-hour clock.
    pub fn legacy(&self) -> String {
        let h12 = match self.hour % 12 {
            0 => 12,
            h => h,
        };
        let ampm = if self.hour < 12 { "AM" } else { "PM" };
        format!(
            "{} {:>2} {:04} {:>2}:{:02}{}",
            MONTHS[(self.month - 1) as usize],
            self.day,
            self.year,
            h12,
            self.minute,
            ampm
        )
    }

    /// `2025-10-20T200020`, the timestamp in a backup file's name (sample 04).
    pub fn compact(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}{:02}{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// A field of exactly `len` ASCII digits.
fn num<T: std::str::FromStr>(s: &str, len: usize) -> Option<T> {
    if s.len() != len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_em() {
        // 2025-10-20T20:04:07.267Z
        let c = Civil::from_unix_ms(1_760_990_647_267);
        assert_eq!(c.iso(), "2025-10-20T20:04:07.267Z");
        assert_eq!(c.plain(), "2025-10-20 20:04:07");
        assert_eq!(c.legacy(), "Oct 20 2025  8:04PM");
        assert_eq!(c.compact(), "2025-10-20T200407");
        // 2025-10-06T13:59:50.230Z
        let d = Civil::from_unix_ms(1_759_759_190_230);
        assert_eq!(d.iso(), "2025-10-06T13:59:50.23Z");
        assert_eq!(d.legacy(), "Oct  6 2025  1:59PM");
        assert_eq!(
            Civil::from_unix_ms(1_735_689_600_000).iso(),
            "2025-01-01T00:00:00Z"
        );
        assert_eq!(
            Civil::from_unix_ms(1_735_689_600_000).legacy(),
            "Jan  1 2025 12:00AM"
        );
    }

    #[test]
    fn parses_and_round_trips() {
        for ms in [0, 1_760_990_647_267, 1_759_759_190_230, 951_782_400_000] {
            let c = Civil::from_unix_ms(ms);
            assert_eq!(c.to_unix_ms(), ms);
            assert_eq!(Civil::parse_utc(&c.iso()), Some(ms));
        }
        assert_eq!(
            Civil::parse_utc("2025-10-20T20:04:07.267999Z"),
            Some(1_760_990_647_267)
        );
        assert_eq!(Civil::parse_utc("2025-01-01"), Some(1_735_689_600_000));
        assert_eq!(Civil::parse_utc("2025-02-29"), None);
        assert_eq!(
            Civil::parse_utc("2024-02-29T00:00:00"),
            Some(1_709_164_800_000)
        );
        assert_eq!(Civil::parse_utc("2025-1-01"), None);
        assert_eq!(Civil::parse_utc("yesterday"), None);
        assert_eq!(Civil::parse_utc("2025-01-01T10:00:00.x"), None);
        assert_eq!(
            Civil::from_unix_ms(1_733_391_660_000).us(),
            "12/5/2024 9:41 AM"
        );
    }
}
