//! The `--agents FILE` TOML: which agents a gateway offers, under which `name@version`, and
//! how each runs.
//!
//! ```toml
//! builtins = false            # optional: drop the built-in demo agents (default: keep them)
//!
//! [[agents]]
//! name = "summarize"
//! version = "1.0.0"
//! backend = "stdio"
//! command = ["python3", "summarize.py"]   # argv
//! env = { MODEL = "small" }               # optional, added to the gateway's environment
//! cwd = "agents"                          # optional, relative to this file's directory
//! max_children = 4                        # optional cap on concurrent children
//! long_lived = true                       # optional: children serve several jobs each
//! jobs_per_child = 8                      #   at most this many at once (default 1)
//! idle_timeout_sec = 60                   #   and end after this long without one
//!
//! [[agents]]
//! name = "research"
//! version = "2.1.0"
//! backend = "upstream"
//! url = "ws://research.internal:8080/arcp"   # or wss://
//! token_env = "RESEARCH_TOKEN"            # or token = "..."
//! agent = "research"                      # optional: its name upstream, default: name
//! max_jobs = 16                           # optional cap on concurrent jobs
//! ca_file = "research-ca.pem"             # optional: roots for wss:// besides the system's
//! ```
//!
//! Everything is checked when the file is loaded, so that a gateway with a bad file does not
//! start: unknown keys, a malformed `name@version`, a duplicate, a command that is not found
//! or not executable, a URL that is not `ws://` or `wss://`, a token variable that is not
//! set. Each error names its entry: `agents[1] (summarize@1.0.0): ...`.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    fmt,
    num::NonZeroUsize,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;

use crate::{
    agent::{
        builtin,
        stdio::{LongLived, StdioAgent, StdioSpec},
        upstream::{UpstreamAgent, UpstreamSpec, UpstreamTimings},
        Agent, AgentRegistry,
    },
    ids::AgentRef,
};

/// How long a cancelled child gets to end its job after `job.cancel`, by default.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(2);
/// How long a child has to answer `session.hello`, by default.
pub const DEFAULT_WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a long-lived child without a job lives on, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an agents file cannot be used; the message names the file or the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentsFileError(String);

impl fmt::Display for AgentsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AgentsFileError {}

/// A loaded, checked agents file.
#[derive(Debug)]
pub struct AgentsFile {
    /// Whether the built-in demo agents stay registered beside the file's.
    pub builtins: bool,
    /// The entries, in file order.
    pub agents: Vec<AgentEntry>,
}

/// One `[[agents]]` entry.
#[derive(Debug)]
pub struct AgentEntry {
    /// Agent name (§7.5).
    pub name: String,
    /// Its version.
    pub version: String,
    /// How it runs.
    pub backend: Backend,
}

/// How an agent runs.
#[derive(Debug)]
pub enum Backend {
    /// A built-in agent, by its built-in name.
    Builtin(String),
    /// A child process per job, speaking ARCP over NDJSON on stdin/stdout.
    Stdio(Arc<StdioSpec>),
    /// An ARCP runtime elsewhere, over WebSocket.
    Upstream(Arc<UpstreamSpec>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default = "yes")]
    builtins: bool,
    #[serde(default)]
    agents: Vec<toml::Table>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
enum RawEntry {
    Builtin(RawBuiltin),
    Stdio(RawStdio),
    Upstream(RawUpstream),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuiltin {
    name: String,
    version: String,
    /// The built-in agent to mount; by default the one called `name`.
    builtin: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStdio {
    name: String,
    version: String,
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    max_children: Option<NonZeroUsize>,
    /// The agent's name inside the child; by default `name`.
    agent: Option<String>,
    /// The bearer token presented in the child's `session.hello`.
    token: Option<String>,
    cancel_grace_sec: Option<f64>,
    welcome_timeout_sec: Option<f64>,
    /// Children that serve several jobs, instead of one per job.
    #[serde(default)]
    long_lived: bool,
    jobs_per_child: Option<NonZeroUsize>,
    idle_timeout_sec: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    version: String,
    url: String,
    token: Option<String>,
    token_env: Option<String>,
    /// The agent's name at the upstream; by default `name`.
    agent: Option<String>,
    max_jobs: Option<NonZeroUsize>,
    ca_file: Option<PathBuf>,
    cancel_grace_sec: Option<f64>,
    welcome_timeout_sec: Option<f64>,
    reconnect_timeout_sec: Option<f64>,
    ping_interval_sec: Option<f64>,
    check_interval_sec: Option<f64>,
}

impl AgentsFile {
    /// Reads and checks the agents file at `path`.
    pub fn load(path: &Path) -> Result<AgentsFile, AgentsFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AgentsFileError(format!("cannot read {}: {e}", path.display())))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Self::parse(&text, base)
            .map_err(|AgentsFileError(m)| AgentsFileError(format!("{}: {m}", path.display())))
    }

    /// Parses and checks agents-file `text`; relative paths in it are relative to `base`.
    pub fn parse(text: &str, base: &Path) -> Result<AgentsFile, AgentsFileError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| AgentsFileError(e.to_string()))?;
        let mut seen = BTreeSet::new();
        let mut agents = Vec::with_capacity(raw.agents.len());
        for (i, table) in raw.agents.into_iter().enumerate() {
            let field = |key: &str| table.get(key).and_then(|v| v.as_str()).unwrap_or("?");
            let label = format!("agents[{i}] ({}@{})", field("name"), field("version"));
            let fail = |m: String| AgentsFileError(format!("{label}: {m}"));
            let entry: RawEntry = toml::Value::Table(table.clone())
                .try_into()
                .map_err(|e: toml::de::Error| fail(e.message().to_owned()))?;
            let entry = entry_of(entry, base).map_err(fail)?;
            if !seen.insert((entry.name.clone(), entry.version.clone())) {
                return Err(fail(
                    "an earlier entry has the same name and version".into(),
                ));
            }
            agents.push(entry);
        }
        Ok(AgentsFile {
            builtins: raw.builtins,
            agents,
        })
    }

    /// The registry the file describes: the built-in agents unless `builtins = false`, then
    /// the file's entries in order (the last version of a name is its default).
    pub fn registry(&self) -> Result<AgentRegistry, AgentsFileError> {
        let mut registry = if self.builtins {
            AgentRegistry::with_builtins()
        } else {
            AgentRegistry::new()
        };
        for (i, entry) in self.agents.iter().enumerate() {
            let agent: Arc<dyn Agent> = match &entry.backend {
                Backend::Builtin(name) => builtin::by_name(name).ok_or_else(|| {
                    AgentsFileError(format!(
                        "agents[{i}] ({}@{}): no built-in agent {name:?}",
                        entry.name, entry.version
                    ))
                })?,
                Backend::Stdio(spec) => Arc::new(StdioAgent::new(spec.clone())),
                Backend::Upstream(spec) => Arc::new(UpstreamAgent::new(spec.clone())),
            };
            registry
                .register(&entry.name, &entry.version, agent)
                .map_err(|e| {
                    AgentsFileError(format!(
                        "agents[{i}] ({}@{}): {}",
                        entry.name,
                        entry.version,
                        e.message()
                    ))
                })?;
        }
        Ok(registry)
    }
}

fn entry_of(entry: RawEntry, base: &Path) -> Result<AgentEntry, String> {
    let (name, version, backend) = match entry {
        RawEntry::Builtin(b) => {
            let builtin = b.builtin.unwrap_or_else(|| b.name.clone());
            if builtin::by_name(&builtin).is_none() {
                return Err(format!(
                    "no built-in agent {builtin:?} (there are: {})",
                    builtin::names().join(", ")
                ));
            }
            (b.name, b.version, Backend::Builtin(builtin))
        }
        RawEntry::Stdio(s) => {
            let spec = stdio_spec(&s, base)?;
            (s.name, s.version, Backend::Stdio(Arc::new(spec)))
        }
        RawEntry::Upstream(u) => {
            let spec = upstream_spec(&u, base)?;
            (u.name, u.version, Backend::Upstream(Arc::new(spec)))
        }
    };
    if !AgentRef::valid_name(&name) {
        return Err(format!("invalid agent name {name:?} (see §7.5 grammar)"));
    }
    if !AgentRef::valid_version(&version) {
        return Err(format!(
            "invalid agent version {version:?} (see §7.5 grammar)"
        ));
    }
    Ok(AgentEntry {
        name,
        version,
        backend,
    })
}

fn stdio_spec(s: &RawStdio, base: &Path) -> Result<StdioSpec, String> {
    let (program, args) = s
        .command
        .split_first()
        .ok_or("command must name a program (an argv array)")?;
    let cwd = match &s.cwd {
        Some(cwd) => base.join(cwd),
        None => base.to_owned(),
    };
    if !cwd.is_dir() {
        return Err(format!("cwd {} is not a directory", cwd.display()));
    }
    let path_var = s
        .env
        .get("PATH")
        .map(OsString::from)
        .or_else(|| std::env::var_os("PATH"));
    let program = find_program(program, &cwd, path_var)?;
    let long_lived = match (s.long_lived, s.jobs_per_child, s.idle_timeout_sec) {
        (true, jobs, idle) => Some(LongLived {
            jobs_per_child: jobs.unwrap_or(NonZeroUsize::MIN),
            idle_timeout: seconds("idle_timeout_sec", idle, DEFAULT_IDLE_TIMEOUT)?,
        }),
        (false, None, None) => None,
        (false, _, _) => {
            return Err("jobs_per_child and idle_timeout_sec need long_lived = true".into())
        }
    };
    Ok(StdioSpec {
        program,
        args: args.to_vec(),
        env: s.env.clone(),
        cwd,
        max_children: s.max_children,
        agent: s.agent.clone().unwrap_or_else(|| s.name.clone()),
        token: s.token.clone().unwrap_or_default(),
        cancel_grace: seconds("cancel_grace_sec", s.cancel_grace_sec, DEFAULT_CANCEL_GRACE)?,
        welcome_timeout: seconds(
            "welcome_timeout_sec",
            s.welcome_timeout_sec,
            DEFAULT_WELCOME_TIMEOUT,
        )?,
        long_lived,
    })
}

/// `value` seconds for `key`, or `default` when absent.
fn seconds(key: &str, value: Option<f64>, default: Duration) -> Result<Duration, String> {
    match value {
        None => Ok(default),
        Some(secs) => Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("{key} must be a positive number of seconds")),
    }
}

fn upstream_spec(u: &RawUpstream, base: &Path) -> Result<UpstreamSpec, String> {
    let token = match (&u.token, &u.token_env) {
        (Some(_), Some(_)) => return Err("set token or token_env, not both".into()),
        (Some(token), None) => token.clone(),
        (None, Some(var)) => {
            std::env::var(var).map_err(|_| format!("token_env names {var:?}, which is not set"))?
        }
        (None, None) => String::new(),
    };
    let timings = UpstreamTimings {
        cancel_grace: seconds(
            "cancel_grace_sec",
            u.cancel_grace_sec,
            UpstreamTimings::DEFAULT.cancel_grace,
        )?,
        welcome_timeout: seconds(
            "welcome_timeout_sec",
            u.welcome_timeout_sec,
            UpstreamTimings::DEFAULT.welcome_timeout,
        )?,
        reconnect_timeout: seconds(
            "reconnect_timeout_sec",
            u.reconnect_timeout_sec,
            UpstreamTimings::DEFAULT.reconnect_timeout,
        )?,
        ping_interval: seconds(
            "ping_interval_sec",
            u.ping_interval_sec,
            UpstreamTimings::DEFAULT.ping_interval,
        )?,
        check_interval: seconds(
            "check_interval_sec",
            u.check_interval_sec,
            UpstreamTimings::DEFAULT.check_interval,
        )?,
    };
    UpstreamSpec::new(
        &u.url,
        token,
        u.agent.clone().unwrap_or_else(|| u.name.clone()),
        u.max_jobs,
        u.ca_file.as_ref().map(|f| base.join(f)).as_deref(),
        timings,
    )
}

/// The executable `program` names: a path (relative to `cwd`) when it has a `/`, otherwise
/// the first executable file of that name on `path_var`.
fn find_program(program: &str, cwd: &Path, path_var: Option<OsString>) -> Result<PathBuf, String> {
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = cwd.join(program);
        return if executable(&path) {
            Ok(path)
        } else if path.exists() {
            Err(format!("command {program:?} is not an executable file"))
        } else {
            Err(format!("command {program:?} does not exist"))
        };
    }
    path_var
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| cwd.join(dir).join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("command {program:?} is not found on PATH or not executable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentsFile, String> {
        AgentsFile::parse(text, Path::new(".")).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_stdio_and_builtin_entries() {
        let file = parse(
            r#"
            builtins = false
            [[agents]]
            name = "summarize"
            version = "1.0.0"
            backend = "stdio"
            command = ["sh", "-c", "true"]
            env = { A = "b" }
            max_children = 2

            [[agents]]
            name = "repeat"
            version = "2.0.0"
            backend = "builtin"
            builtin = "echo"
            "#,
        )
        .unwrap();
        assert!(!file.builtins);
        let Backend::Stdio(spec) = &file.agents[0].backend else {
            panic!("a stdio entry");
        };
        assert!(spec.program.ends_with("sh"));
        assert_eq!(spec.args, ["-c", "true"]);
        assert_eq!(spec.max_children, NonZeroUsize::new(2));
        assert_eq!(spec.agent, "summarize");
        let inventory = file.registry().unwrap().inventory();
        let names: Vec<_> = inventory.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["repeat", "summarize"]);
    }

    #[test]
    fn names_the_entry_that_is_wrong() {
        let entry = |body: &str| {
            format!(
                "[[agents]]\nname = \"ok\"\nversion = \"1.0.0\"\nbackend = \"builtin\"\nbuiltin = \"echo\"\n\
                 [[agents]]\nname = \"summarize\"\nversion = \"1.0.0\"\n{body}"
            )
        };
        for (body, expected) in [
            (
                "backend = \"stdio\"\ncommand = [\"sh\"]\nbogus = 1\n",
                "unknown field `bogus`",
            ),
            (
                "backend = \"stdio\"\ncommand = [\"no-such-program-here\"]\n",
                "not found on PATH",
            ),
            (
                "backend = \"stdio\"\ncommand = []\n",
                "command must name a program",
            ),
            (
                "backend = \"upstream\"\nurl = \"http://x\"\n",
                "not a ws:// or wss:// URL",
            ),
            (
                "backend = \"upstream\"\nurl = \"ws://x\"\ntoken_env = \"ARCP_NO_SUCH_VARIABLE\"\n",
                "which is not set",
            ),
            ("backend = \"carrier-pigeon\"\n", "unknown variant"),
        ] {
            let e = parse(&entry(body)).unwrap_err();
            assert!(e.starts_with("agents[1] (summarize@1.0.0): "), "{e}");
            assert!(e.contains(expected), "{e}");
        }
        assert!(parse("agents = 3").unwrap_err().contains("invalid type"));
        assert!(parse("nonsense = true")
            .unwrap_err()
            .contains("unknown field"));
    }
}
