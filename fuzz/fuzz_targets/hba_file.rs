//! An HBA file of any contents: rules or an error naming a line, and the
//! rules answer lookups.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgcorral::auth::{ConnKind, Hba};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(hba) = Hba::parse(&text, "pg_hba.conf") {
        let _ = hba.find(ConnKind::Local, "postgres", "postgres");
        let addr = std::net::IpAddr::from([127, 0, 0, 1]);
        let _ = hba.find(ConnKind::Host { addr, ssl: false }, "db", "user");
    }
});
