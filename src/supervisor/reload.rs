//! Configuration at run time: reload (SIGHUP, `conf reload`) and `conf
//! get|set|ls`. Which keys may change is decided in `config::keys`; here
//! the supervisor takes the new values: the log level at once, the limits'
//! `max_size` in the shared segment, and everything else through its own
//! copy of the configuration, which upkeep reads every second and every
//! worker forked afterwards inherits.

use super::commands::Done;
use super::Supervisor;
use crate::config::keys::{Change, Setting as ConfigSetting};
use crate::config::Config;
use crate::management::reply::{Applied, ConfLs, ConfSet, NeedsRestart, Reload, Setting};

fn setting(s: ConfigSetting) -> Setting {
    Setting {
        key: s.key,
        value: s.value,
        reloadable: s.reloadable,
    }
}

fn applied(c: &Change) -> Applied {
    Applied {
        key: c.key.clone(),
        old: c.running.clone(),
        file: c.file.clone(),
    }
}

fn needs_restart(c: &Change) -> NeedsRestart {
    NeedsRestart {
        key: c.key.clone(),
        running: c.running.clone(),
        file: c.file.clone(),
    }
}

impl Supervisor {
    /// Re-reads the configuration file. An unreadable or invalid file
    /// changes nothing; a changed key that needs a restart is logged and
    /// kept as it is. `source` names the trigger in the log.
    pub(super) fn reload_config(&mut self, source: &str) -> Result<Done, String> {
        if let Err(e) = crate::logging::reopen() {
            log::error!("{source}: cannot reopen the log file: {e}");
        }
        let Some(path) = self.config.path.clone() else {
            let e = "no configuration file to reload".to_string();
            log::error!("{source}: {e}");
            return Err(e);
        };
        let file = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                log::error!("{source}: configuration not reloaded, nothing changed: {e}");
                return Err(format!("configuration not reloaded, nothing changed: {e}"));
            }
        };
        let plan = self.config.reload_plan(&file);
        for c in &plan.applied {
            log::info!(
                "{source}: {} changed from {} to {}",
                c.key,
                shown(&c.running),
                shown(&c.file)
            );
        }
        for c in &plan.needs_restart {
            log::warn!(
                "{source}: {} needs a restart; keeping {} (the file says {})",
                c.key,
                shown(&c.running),
                shown(&c.file)
            );
        }
        log::info!(
            "{source}: configuration reloaded from {}: {} change(s) applied, {} need a restart",
            path.display(),
            plan.applied.len(),
            plan.needs_restart.len()
        );
        let reply = Reload {
            path: path.display().to_string(),
            applied: plan.applied.iter().map(applied).collect(),
            needs_restart: plan.needs_restart.iter().map(needs_restart).collect(),
        };
        self.apply_config(plan.config);

        Ok(Box::new(reply))
    }

    /// Makes `new` the running configuration and carries out what cannot
    /// wait for the next read of it.
    fn apply_config(&mut self, new: Config) {
        if new.main.log_level != self.config.main.log_level {
            crate::logging::set_level(new.main.log_level);
        }
        for (i, rule) in new.limits.iter().enumerate() {
            if let Some(rec) = self.segment.limit(Some(i)) {
                let max = rule.max_size.min(u32::MAX as usize) as u32;
                if rec.max_size() != max {
                    rec.set_max_size(max);
                    // Waiting clients may fit now.
                    self.segment.wake_all();
                }
            }
        }
        self.config = new;
    }

    pub(super) fn conf_get(&self, key: &str) -> Result<Done, String> {
        let s = self
            .config
            .setting(key)
            .ok_or_else(|| format!("unknown configuration key `{key}` (conf ls lists them)"))?;
        Ok(Box::new(setting(s)))
    }

    pub(super) fn conf_set(&mut self, key: &str, value: &str) -> Result<Done, String> {
        let new = self
            .config
            .with_setting(key, value)
            .map_err(|e| e.to_string())?;
        let before = self
            .config
            .setting(key)
            .map(|s| s.value)
            .unwrap_or_default();
        let after = new
            .setting(key)
            .ok_or_else(|| format!("unknown key `{key}`"))?;
        log::info!(
            "conf set: {} changed from {} to {} (until the next reload or restart)",
            after.key,
            shown(&before),
            shown(&after.value)
        );
        self.apply_config(new);
        Ok(Box::new(ConfSet {
            setting: setting(after),
            old: before,
        }))
    }

    pub(super) fn conf_ls(&self) -> ConfLs {
        ConfLs {
            settings: self.config.settings().into_iter().map(setting).collect(),
        }
    }
}

/// An empty value (an unset path) shown as such in messages.
fn shown(v: &str) -> &str {
    if v.is_empty() {
        "(unset)"
    } else {
        v
    }
}
