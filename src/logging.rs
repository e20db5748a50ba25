//! Logging to the console, a file or syslog.
//!
//! Every process of the pool (supervisor, workers, helpers) logs through the
//! same logger, inherited across fork. Hence: no threads, no buffering, no
//! cached pid, and one write(2) per line so that lines from different processes
//! never interleave in a shared file opened with O_APPEND.

use std::ffi::CString;
use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, Log, Metadata, Record};

use crate::config::{LogLevel, LogType};

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("log_type = \"file\" needs log_path")]
    MissingPath,
    #[error("cannot open log file {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another logger is already installed")]
    AlreadySet(#[source] log::SetLoggerError),
}

/// Installs the logger. A second call (tests, or a reload) only changes the
/// level: the destination is fixed for the life of the process.
pub fn init(
    log_type: LogType,
    level: LogLevel,
    log_path: Option<&Path>,
) -> Result<(), LoggingError> {
    if LOGGER.get().is_some() {
        set_level(level);
        return Ok(());
    }
    let sink = make_sink(log_type, log_path)?;
    let logger = LOGGER.get_or_init(|| Logger { sink });
    log::set_logger(logger).map_err(LoggingError::AlreadySet)?;
    set_level(level);
    Ok(())
}

/// Changes the level at run time (SIGHUP reload).
pub fn set_level(level: LogLevel) {
    log::set_max_level(level.to_filter());
}

/// Re-opens the log file at the same path, so that a file moved away by
/// logrotate stops receiving lines; a no-op for console and syslog. Only this
/// process is affected: children forked earlier keep their descriptor.
pub fn reopen() -> Result<(), LoggingError> {
    if let Some(Logger {
        sink: Sink::File { path, fd },
    }) = LOGGER.get()
    {
        let new = open_log_file(path)?;
        let old = fd.swap(new, Ordering::SeqCst);
        // `old` came from into_raw_fd and nothing else owns it; after the
        // swap no later write uses it. A failed close leaves nothing to do.
        let _ = nix::unistd::close(old);
    }
    Ok(())
}

/// When the current log file was opened, for `log_rotation_age`.
static OPENED_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Called by the supervisor once a second: when the log file has reached
/// `max_size` bytes or `max_age`, it is renamed to `<path>.<UTC time>` and
/// a new one opened. Workers forked afterwards write to the new file;
/// running ones finish in the old one. Returns the name it was moved to.
pub fn rotate_if_due(max_size: u64, max_age: std::time::Duration) -> Option<PathBuf> {
    let Some(Logger {
        sink: Sink::File { path, fd },
    }) = LOGGER.get()
    else {
        return None;
    };
    let opened = OPENED_MS.load(Ordering::SeqCst);
    if opened == 0 {
        OPENED_MS.store(now_ms(), Ordering::SeqCst);
    }
    let size = nix::sys::stat::fstat(fd.load(Ordering::SeqCst))
        .ok()?
        .st_size
        .max(0) as u64;
    let too_big = max_size > 0 && size >= max_size;
    let too_old = !max_age.is_zero()
        && opened != 0
        && now_ms().saturating_sub(opened) >= max_age.as_millis() as u64;
    if !too_big && !too_old {
        return None;
    }
    let stamp = format_line(SystemTime::now(), Level::Info, 0, &"");
    // "2026-11-23 20:31:05.123 INFO  [0] " → "20261123-203105.123"
    let when: String = stamp
        .split(' ')
        .take(2)
        .collect::<Vec<_>>()
        .join("-")
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '-' || *c == '.')
        .collect();
    let target = PathBuf::from(format!("{}.{when}", path.display()));
    if std::fs::rename(path, &target).is_err() {
        return None;
    }
    let _ = reopen();
    OPENED_MS.store(now_ms(), Ordering::SeqCst);
    Some(target)
}

/// One log line, newline included: `2026-11-23 20:31:05.123 INFO  [12345] message`
/// (UTC, milliseconds, level padded to five).
pub fn format_line(time: SystemTime, level: Level, pid: u32, message: &dyn fmt::Display) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let days = i64::try_from(seconds / 86_400).unwrap_or(0);
    let (year, month, day) = civil_from_days(days);
    let of_day = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} {:<5} [{pid}] {message}\n",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        since_epoch.subsec_millis(),
        level.as_str(),
    )
}

/// Gregorian (year, month, day) of a count of days since 1970-01-01, after
/// Howard Hinnant's `civil_from_days`; exact for any date in range.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// The descriptor a forked child must keep open for logging to work (the
/// log file), so that it is left out when the child closes what it
/// inherited. Closing it would be worse than losing log lines: the number
/// could be reused for a socket and receive log lines.
pub fn inherited_descriptor() -> Option<i32> {
    match LOGGER.get().map(|l| &l.sink) {
        Some(Sink::File { fd, .. }) => Some(fd.load(Ordering::SeqCst)),
        _ => None,
    }
}

/// Called in a forked child before it closes inherited descriptors: the C
/// library's syslog connection is dropped and reopened lazily, so it never
/// writes to a descriptor number the child has reused.
pub fn before_closing_inherited() {
    if let Some(Sink::Syslog) = LOGGER.get().map(|l| &l.sink) {
        crate::sys::syslog::reopen();
    }
}

fn make_sink(log_type: LogType, log_path: Option<&Path>) -> Result<Sink, LoggingError> {
    Ok(match log_type {
        LogType::Console => Sink::Console,
        LogType::File => {
            let path = log_path.ok_or(LoggingError::MissingPath)?;
            let fd = open_log_file(path)?;
            Sink::File {
                path: path.to_path_buf(),
                fd: AtomicI32::new(fd),
            }
        }
        LogType::Syslog => {
            crate::sys::syslog::open();
            Sink::Syslog
        }
    })
}

struct Logger {
    sink: Sink,
}

enum Sink {
    Console,
    File {
        path: PathBuf,
        /// Swapped by [`reopen`]; an atomic rather than a lock so that a fork
        /// can never inherit it held.
        fd: AtomicI32,
    },
    Syslog,
}

fn open_log_file(path: &Path) -> Result<i32, LoggingError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map(IntoRawFd::into_raw_fd)
        .map_err(|source| LoggingError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// A single write(2): a short write is accepted as is, since retrying would
/// split the line and let another process's line land in the middle.
fn write_line(fd: i32, line: &[u8]) {
    // Nowhere to report a failure to log.
    let _ = crate::sys::io::write_raw(fd, line);
}

fn syslog_priority(level: Level) -> libc::c_int {
    match level {
        Level::Error => libc::LOG_ERR,
        Level::Warn => libc::LOG_WARNING,
        Level::Info => libc::LOG_INFO,
        Level::Debug | Level::Trace => libc::LOG_DEBUG,
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        match &self.sink {
            Sink::Console => {
                let line = format_line(
                    SystemTime::now(),
                    record.level(),
                    std::process::id(),
                    record.args(),
                );
                write_line(libc::STDERR_FILENO, line.as_bytes());
            }
            Sink::File { fd, .. } => {
                let line = format_line(
                    SystemTime::now(),
                    record.level(),
                    std::process::id(),
                    record.args(),
                );
                write_line(fd.load(Ordering::SeqCst), line.as_bytes());
            }
            Sink::Syslog => {
                // syslog adds its own time stamp and pid (LOG_PID); a NUL in the
                // message would end it early, so it is replaced.
                let text = record.args().to_string().replace('\0', "\u{FFFD}");
                if let Ok(text) = CString::new(text) {
                    crate::sys::syslog::send(syslog_priority(record.level()), &text);
                }
            }
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(seconds: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_millis(millis)
    }

    #[test]
    fn line_format() {
        // 2026-11-23 20:31:05 UTC
        let time = at(1_795_465_865, 123);
        assert_eq!(
            format_line(time, Level::Info, 12345, &"message"),
            "2026-11-23 20:31:05.123 INFO  [12345] message\n"
        );
        assert_eq!(
            format_line(time, Level::Error, 1, &format_args!("x={}", 5)),
            "2026-11-23 20:31:05.123 ERROR [1] x=5\n"
        );
        assert_eq!(
            format_line(at(0, 7), Level::Warn, 42, &"w"),
            "1970-01-01 00:00:00.007 WARN  [42] w\n"
        );
        assert!(format_line(at(0, 0), Level::Debug, 1, &"").contains(" DEBUG [1] "));
        assert!(format_line(at(0, 0), Level::Trace, 1, &"").contains(" TRACE [1] "));
        // Before the epoch is clamped rather than panicking.
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert!(format_line(before, Level::Info, 1, &"").starts_with("1970-01-01 00:00:00.000"));
    }

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_780), (2026, 11, 23));
        assert_eq!(civil_from_days(47_481), (2099, 12, 31));
        // Walk 200 years day by day: dates strictly increase and stay valid.
        let mut previous = civil_from_days(0);
        for day in 1..73_049 {
            let current = civil_from_days(day);
            assert!(current > previous, "{day}");
            assert!((1..=12).contains(&current.1) && (1..=31).contains(&current.2));
            previous = current;
        }
        assert_eq!(previous, (2169, 12, 31));
    }

    #[test]
    fn syslog_levels() {
        assert_eq!(syslog_priority(Level::Error), libc::LOG_ERR);
        assert_eq!(syslog_priority(Level::Warn), libc::LOG_WARNING);
        assert_eq!(syslog_priority(Level::Info), libc::LOG_INFO);
        assert_eq!(syslog_priority(Level::Trace), libc::LOG_DEBUG);
    }

    #[test]
    fn missing_path_is_an_error() {
        assert!(matches!(
            make_sink(LogType::File, None),
            Err(LoggingError::MissingPath)
        ));
        let bad = Path::new("/nonexistent-pgcorral-dir/x.log");
        let err = make_sink(LogType::File, Some(bad)).err().unwrap();
        assert!(matches!(err, LoggingError::Open { .. }));
        assert!(std::error::Error::source(&err).is_some());
        assert!(err.to_string().contains("/nonexistent-pgcorral-dir/x.log"));
    }

    /// The only test that installs the logger (it is process-wide): file sink,
    /// level changes, a second init, and reopen after the file is moved away.
    #[test]
    fn file_logger_end_to_end() {
        let dir =
            std::env::temp_dir().join(format!("pgcorral-logging-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pgcorral.log");
        if init(LogType::File, LogLevel::Info, Some(&path)).is_err()
            || !matches!(
                LOGGER.get(),
                Some(Logger {
                    sink: Sink::File { .. }
                })
            )
        {
            // Another test installed a different logger first; the format and
            // the sink are covered by the other tests.
            return;
        }
        // Other tests in this process may log into the same file meanwhile, so
        // only lines carrying this test's marker are looked at.
        log::info!("logging-test first");
        log::debug!("logging-test hidden");
        set_level(LogLevel::Debug);
        log::debug!("logging-test shown");
        init(LogType::Console, LogLevel::Warn, None).unwrap();
        log::info!("logging-test hidden again");
        log::warn!("logging-test warned");

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("logging-test"))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        let pid = format!("[{}]", std::process::id());
        assert!(
            lines[0].ends_with(&format!(" INFO  {pid} logging-test first")),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].ends_with(&format!(" DEBUG {pid} logging-test shown")),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with(&format!(" WARN  {pid} logging-test warned")),
            "{}",
            lines[2]
        );
        assert_eq!(lines[0].as_bytes()[4], b'-');
        assert_eq!(lines[0].as_bytes()[19], b'.');

        let moved = dir.join("pgcorral.log.1");
        std::fs::rename(&path, &moved).unwrap();
        reopen().unwrap();
        log::warn!("logging-test after rotation");
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("after rotation"));
        assert!(!std::fs::read_to_string(&moved)
            .unwrap()
            .contains("after rotation"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
