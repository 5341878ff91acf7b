//! One config file beside the flags and the environment: `serve --config FILE` (TOML), merged
//! in one order, flags > environment > file > defaults, over every setting `serve` has.
//!
//! The file's keys are the flags' names (`resume_window_sec` or `resume-window-sec` for
//! `--resume-window-sec`); a repeatable flag takes an array. `[[agents]]` tables (and
//! `builtins`) declare agent backends inline, as an `--agents FILE` would. The merge works on
//! the command line itself: a file value whose flag the command line and the environment
//! leave unset is added to the arguments clap parses, so every setting is checked, typed and
//! defaulted in one place, and a flag added to `serve` is a key of the file with nothing more
//! to do.
//!
//! Every value is checked before the merge, so that an error names where it came from: an
//! unknown key or a bad value in the file names the file and the key, a bad value in the
//! environment names the variable. [`effective`] lists the merged settings and the source of
//! each, with the values of secret settings (those whose flag hides its environment value)
//! masked.

use std::{
    ffi::OsString,
    fmt,
    path::{Path, PathBuf},
};

use clap::{parser::ValueSource, Arg, ArgMatches, Command};

/// The flag naming the config file.
pub const CONFIG_FLAG: &str = "config";
/// What a masked secret shows.
const MASK: &str = "***";
/// Keys of the file that are not flags: inline agent backends.
const AGENT_KEYS: &[&str] = &["agents", "builtins"];

/// Why the settings cannot be used; the message names the source and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError(String);

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SettingsError {}

/// The arguments of `serve` with the config file merged in.
#[derive(Debug, Default)]
pub struct Merged {
    /// The arguments to parse: the command line, then the file's values it leaves unset.
    pub args: Vec<OsString>,
    /// The file's inline `[[agents]]` (and `builtins`), as an agents-file TOML, and the
    /// directory its relative paths are relative to.
    pub agents: Option<(String, PathBuf)>,
    /// The settings the file gave (the others came from elsewhere).
    pub file_keys: Vec<String>,
}

/// Merges the config file that `args` (a whole command line, for `cmd`) name with
/// `--config` into them, after checking the environment's values. Without a config file the
/// arguments are returned as they are; a command line clap refuses is too, for clap to say why.
pub fn merge(cmd: &Command, args: Vec<OsString>) -> Result<Merged, SettingsError> {
    let unchanged = |args| {
        Ok(Merged {
            args,
            ..Merged::default()
        })
    };
    let matches = match cmd.clone().try_get_matches_from(&args) {
        Ok(matches) => matches,
        // Refused only with the environment: a variable of it is at fault, which the check
        // below names.
        Err(_) => match without_env(cmd).try_get_matches_from(&args) {
            Ok(matches) => {
                if let Some((name, sub_matches)) = matches.subcommand() {
                    if let Some(sub) = cmd.find_subcommand(name) {
                        check_environment(sub, sub_matches)?;
                    }
                }
                return unchanged(args);
            }
            Err(_) => return unchanged(args),
        },
    };
    let Some((name, serve)) = matches.subcommand() else {
        return unchanged(args);
    };
    // Only the subcommand that takes a config file (`serve`) has settings to merge.
    let Some(sub) = cmd
        .find_subcommand(name)
        .filter(|sub| sub.get_arguments().any(|a| a.get_id() == CONFIG_FLAG))
    else {
        return unchanged(args);
    };
    check_environment(sub, serve)?;
    let Some(path) = serve
        .try_get_raw(CONFIG_FLAG)
        .ok()
        .flatten()
        .and_then(|mut v| v.next())
    else {
        return unchanged(args);
    };
    let path = PathBuf::from(path);
    let file = read(&path)?;
    let fail = |key: &str, m: String| {
        SettingsError(format!("config file {}: key `{key}`: {m}", path.display()))
    };
    let mut merged = Merged {
        args,
        ..Merged::default()
    };
    let mut agents = toml::Table::new();
    for (key, value) in file {
        if AGENT_KEYS.contains(&key.as_str()) && !matches!(value, toml::Value::String(_)) {
            agents.insert(key, value);
            continue;
        }
        // The flag's name, `-` or `_` alike.
        let long = key.replace('_', "-");
        let arg = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && a.get_id() != CONFIG_FLAG)
            .ok_or_else(|| fail(&key, "no such setting".into()))?;
        let id = arg.get_id().as_str().to_owned();
        let values = values_of(&value).map_err(|m| fail(&key, m))?;
        for v in &values {
            check_value(arg, v).map_err(|m| fail(&key, m))?;
        }
        // Flags and the environment come before the file.
        if matches!(
            serve.value_source(&id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        merged.file_keys.push(id.clone());
        if takes_no_value(arg) {
            if values.first().map(String::as_str) == Some("true") {
                merged.args.push(format!("--{long}").into());
            }
            continue;
        }
        for v in values {
            merged.args.push(format!("--{long}={v}").into());
        }
    }
    if !agents.is_empty() {
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        merged.agents = Some((
            toml::to_string(&agents).map_err(|e| {
                SettingsError(format!("config file {}: agents: {e}", path.display()))
            })?,
            base,
        ));
    }
    Ok(merged)
}

/// `cmd` with no setting read from the environment.
fn without_env(cmd: &Command) -> Command {
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    names.into_iter().fold(cmd.clone(), |cmd, name| {
        cmd.mut_subcommand(name, |sub| sub.mut_args(|a| a.env(None::<&str>)))
    })
}

fn read(path: &Path) -> Result<toml::Table, SettingsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SettingsError(format!("cannot read config file {}: {e}", path.display())))?;
    text.parse::<toml::Table>()
        .map_err(|e| SettingsError(format!("config file {}: {e}", path.display())))
}

/// A file value as the strings a flag takes: an array for a repeatable flag.
fn values_of(value: &toml::Value) -> Result<Vec<String>, String> {
    let one = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "a {} is not a value of this setting",
            other.type_str()
        )),
    };
    match value {
        toml::Value::Array(items) => items.iter().map(one).collect(),
        other => one(other).map(|v| vec![v]),
    }
}

fn takes_no_value(arg: &Arg) -> bool {
    !arg.get_action().takes_values()
}

/// A command of `arg` alone (without its environment variable unless `with_env`), so that a
/// value is checked by the flag's own parser and nothing else's.
fn alone(arg: &Arg, with_env: bool) -> Command {
    let arg = if with_env {
        arg.clone()
    } else {
        arg.clone().env(None::<&str>)
    };
    Command::new("check").no_binary_name(true).arg(arg)
}

/// Whether `value` is one `arg` takes.
fn check_value(arg: &Arg, value: &str) -> Result<(), String> {
    if takes_no_value(arg) {
        return match value {
            "true" | "false" => Ok(()),
            _ => Err(format!("expected true or false, not {value:?}")),
        };
    }
    let long = arg.get_long().unwrap_or_default();
    alone(arg, false)
        .try_get_matches_from([format!("--{long}={value}")])
        .map(|_| ())
        .map_err(|e| clap_message(&e))
}

/// clap's error without its `error: ` prefix and usage.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.trim_start_matches("error: ").to_owned()
}

/// Fails on an environment value of `sub`'s settings that does not parse, naming the
/// variable; those a flag overrides are not looked at.
fn check_environment(sub: &Command, matches: &ArgMatches) -> Result<(), SettingsError> {
    for arg in sub.get_arguments() {
        let Some(var) = arg.get_env() else { continue };
        if matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            continue;
        }
        if std::env::var_os(var).is_none() {
            continue;
        }
        if let Err(e) = alone(arg, true).try_get_matches_from(Vec::<OsString>::new()) {
            return Err(SettingsError(format!(
                "environment variable {}: {}",
                var.to_string_lossy(),
                clap_message(&e)
            )));
        }
    }
    Ok(())
}

/// One merged setting, for `config check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Its key in the file (the flag's name, with `_` for `-`).
    pub key: String,
    /// Its values, secrets masked; none for a setting that is off.
    pub values: Vec<String>,
    /// Where it came from: `flag`, `environment (VAR)`, `file` or `default`.
    pub source: String,
}

/// The settings of `sub` as `matches` (parsed from the `merged` command line) hold them.
pub fn effective(sub: &Command, matches: &ArgMatches, merged: &Merged) -> Vec<Setting> {
    let from_file = &merged.file_keys;
    let mut settings = Vec::new();
    for arg in sub.get_arguments() {
        let id = arg.get_id().as_str();
        if arg.get_long().is_none() || id == CONFIG_FLAG || matches!(id, "help" | "version") {
            continue;
        }
        let secret = arg.is_hide_env_values_set();
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|values| {
                values
                    .map(|v| {
                        let v = v.to_string_lossy();
                        if secret {
                            mask(&v)
                        } else {
                            mask_url_password(&v)
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) if from_file.iter().any(|k| k == id) => {
                "file".to_owned()
            }
            Some(ValueSource::CommandLine) => "flag".to_owned(),
            Some(ValueSource::EnvVariable) => format!(
                "environment ({})",
                arg.get_env()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
            _ => "default".to_owned(),
        };
        settings.push(Setting {
            key: arg.get_long().unwrap_or(id).replace('-', "_"),
            values,
            source,
        });
    }
    settings
}

/// A secret value masked: a `TOKEN=PRINCIPAL` pair keeps its principal, anything else shows
/// nothing of itself.
fn mask(value: &str) -> String {
    match value.split_once('=') {
        Some((_, principal)) => format!("{MASK}={principal}"),
        None => MASK.to_owned(),
    }
}

/// A URL's password masked (`redis://user:***@host`), for settings that are URLs.
pub fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{MASK}@{host}"),
        None => url.to_owned(),
    }
}

/// `settings` as the lines `config check` prints: TOML, the source of each as a comment.
pub fn render(settings: &[Setting]) -> String {
    let mut out = String::new();
    for s in settings {
        let value = match s.values.as_slice() {
            [] if s.source == "default" => {
                out.push_str(&format!("# {} is not set\n", s.key));
                continue;
            }
            [] => "[]".to_owned(),
            [one] => toml_value(one),
            many => format!(
                "[{}]",
                many.iter()
                    .map(|v| toml_value(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let key = &s.key;
        let source = &s.source;
        out.push_str(&format!("{key} = {value}  # {source}\n"));
    }
    out
}

fn toml_value(v: &str) -> String {
    if v.parse::<i64>().is_ok() || v.parse::<f64>().is_ok() || v == "true" || v == "false" {
        v.to_owned()
    } else {
        toml::Value::String(v.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_secrets_and_url_passwords() {
        assert_eq!(mask("s3cret=alice"), "***=alice");
        assert_eq!(mask("s3cret"), "***");
        assert_eq!(
            mask_url_password("redis://user:pw@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(mask_url_password("redis://host:6379"), "redis://host:6379");
    }

    #[test]
    fn renders_toml_with_the_source_of_each_setting() {
        let text = render(&[
            Setting {
                key: "listen".into(),
                values: vec!["127.0.0.1:1".into()],
                source: "file".into(),
            },
            Setting {
                key: "max_log_frames".into(),
                values: vec!["5".into()],
                source: "default".into(),
            },
        ]);
        assert_eq!(
            text,
            "listen = \"127.0.0.1:1\"  # file\nmax_log_frames = 5  # default\n"
        );
        assert!(text.parse::<toml::Table>().is_ok());
    }
}
