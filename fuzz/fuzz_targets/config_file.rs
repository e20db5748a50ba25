//! A configuration file of any contents: a configuration or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgcorral::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = Config::from_toml(text) {
            for setting in config.settings() {
                let _ = config.with_setting(&setting.key, &setting.value);
            }
        }
    }
});
