//! pgbench, the load generator every DBA knows, runs through pgcorral
//! without a failed transaction.

mod common;

use common::{pgbench, Pgcorral, Postgres};

/// The number after `label` on its line, e.g. `number of failed
/// transactions: 0 (0.000%)` → 0.
fn number_after(output: &str, label: &str) -> Option<u64> {
    let line = output.lines().find(|l| l.starts_with(label))?;
    line[label.len()..]
        .trim_start_matches([':', ' '])
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn select_only_pgbench_through_pgcorral() {
    let pg = Postgres::start();
    // Initialise directly: the data load is not what is under test.
    let (ok, out) = pgbench(pg.port, &["-i", "-s", "1", "-q"]);
    assert!(ok, "pgbench -i directly against PostgreSQL failed:\n{out}");

    let pc = Pgcorral::start(&pg, "max_connections = 20\nlog_level = \"info\"");
    let (ok, out) = pgbench(pc.port, &["-S", "-c", "10", "-j", "2", "-T", "10"]);
    eprintln!("{out}");
    assert!(ok, "pgbench through pgcorral exited with an error:\n{out}");

    let processed = number_after(&out, "number of transactions actually processed")
        .unwrap_or_else(|| panic!("no transaction count in pgbench's output:\n{out}"));
    assert!(processed > 0, "pgbench processed no transaction:\n{out}");
    // PostgreSQL 15's pgbench reports failures; older ones stop at the
    // first error, which the exit status and the error lines catch.
    if let Some(failed) = number_after(&out, "number of failed transactions") {
        assert_eq!(failed, 0, "failed transactions through pgcorral:\n{out}");
    }
    let errors: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("error") || l.contains("FATAL"))
        .collect();
    assert!(
        errors.is_empty(),
        "pgbench reported errors:\n{}",
        errors.join("\n")
    );
}
