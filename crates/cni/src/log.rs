//! The plugin's log: the configuration's `logFile` (appended to) or stderr,
//! never stdout, which carries only the result.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

static SINK: Mutex<Option<File>> = Mutex::new(None);
static PREFIX: Mutex<String> = Mutex::new(String::new());

/// Sends the log to `path` from now on. If it cannot be opened, says so on
/// stderr and keeps logging there.
pub fn to_file(path: &Path) {
    let file = std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/"))).and_then(|()| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    });
    match file {
        Ok(file) => {
            *SINK
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(file);
        }
        Err(e) => eprintln!(
            "ciliate-cni: cannot open log file {}: {e}; logging to stderr",
            path.display()
        ),
    }
}

/// Text put in front of every line from now on (the command and container).
pub fn set_prefix(prefix: String) {
    *PREFIX
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = prefix;
}

pub fn write(level: &str, message: std::fmt::Arguments<'_>) {
    let prefix = PREFIX
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let line = format!(
        "{} {level} ciliate-cni[{}] {prefix}{message}\n",
        timestamp(SystemTime::now()),
        std::process::id()
    );
    let mut sink = SINK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let written = sink.as_mut().map(|f| f.write_all(line.as_bytes()));
    if !matches!(written, Some(Ok(()))) {
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write("INFO", format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write("WARN", format_args!($($arg)*)) };
}

/// RFC 3339 in UTC with milliseconds.
fn timestamp(now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(timestamp(t), "2026-11-18T11:06:40.123Z");
        let leap = UNIX_EPOCH + Duration::from_hours(264_384); // 2000-02-29
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
    }
}
