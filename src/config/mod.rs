//! Configuration: upstream's three files merged into one key space.
//!
//! `security`, `replication` and `notification` are each taken from the first
//! directory that has them (`-config_dir`, `.`, `$HOME/.seaweedfs`,
//! `/usr/local/etc/seaweedfs`, `/etc/seaweedfs`), merged in that order (later files
//! win), with keys compared case-insensitively. `WEED_<KEY>` environment variables
//! (dots become underscores) override any key, present in a file or not.
//! [`settings::resolve`] turns the merged keys into typed settings, reporting every
//! problem at once with the file and key it concerns.

pub(crate) mod scaffold;
pub(crate) mod settings;
pub(crate) mod typos;

use crate::text::cut;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub(crate) use settings::{Settings, resolve};

/// The three logical files, in load order.
pub(crate) const FILES: [&str; 3] = ["security", "replication", "notification"];

/// Where to look for the files.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoadOptions {
    /// `-config_dir`: searched first.
    pub config_dir: Option<PathBuf>,
    /// `-config FILE`: the replication file; the other two are looked for beside it first.
    pub replication_file: Option<PathBuf>,
    /// The working directory (`.`).
    pub cwd: PathBuf,
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// System directories searched last (normally `/usr/local/etc/seaweedfs`, `/etc/seaweedfs`).
    pub system_dirs: Vec<PathBuf>,
    /// The environment, for `WEED_*` overrides.
    pub env: HashMap<String, String>,
    /// `WEED_*` variables whose name or value is not UTF-8 (names shown lossily): each
    /// is a configuration problem. Other variables that are not UTF-8 are no concern.
    pub bad_env: Vec<String>,
    /// Leave notification.toml unread (`filer.backup`, which reads the metadata log, as
    /// upstream's reads only replication.toml and security.toml).
    pub without_notification: bool,
    /// See [`Place::strict`].
    pub strict: bool,
}

impl LoadOptions {
    /// Options for the real process: its cwd, `$HOME`, the system dirs and environment.
    pub(crate) fn from_process(place: &Place) -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let expand = |p: PathBuf| match (p.strip_prefix("~"), &home) {
            (Ok(rest), Some(h)) => h.join(rest),
            _ => p,
        };
        let (env, bad_env) = utf8_env(std::env::vars_os());
        LoadOptions {
            config_dir: place.config_dir.clone().map(expand),
            replication_file: place.config.clone().map(expand),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            home: home.clone(),
            system_dirs: vec!["/usr/local/etc/seaweedfs".into(), "/etc/seaweedfs".into()],
            env,
            bad_env,
            without_notification: false,
            strict: place.strict,
        }
    }

    fn search_dirs(&self, name: &str) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if name != "replication"
            && let Some(parent) = self.replication_file.as_ref().and_then(|f| f.parent())
        {
            dirs.push(self.cwd.join(parent));
        }
        dirs.extend(self.config_dir.iter().map(|d| self.cwd.join(d)));
        dirs.push(self.cwd.clone());
        if let Some(h) = &self.home {
            dirs.push(h.join(".seaweedfs"));
        }
        dirs.extend(self.system_dirs.iter().cloned());
        dirs
    }
}

/// Where the configuration is, as the command line says, and how strictly it is read.
#[derive(Debug, Clone, Default)]
pub struct Place {
    /// `-config_dir`.
    pub config_dir: Option<PathBuf>,
    /// `-config FILE`.
    pub config: Option<PathBuf>,
    /// `-strict`: keys that mean nothing (see `typos`) are configuration errors, not
    /// warnings.
    pub strict: bool,
}

/// The environment as text. A variable that is not UTF-8 (any byte string is allowed)
/// is left out; if it is a `WEED_*` one, its lossy name is returned as a problem instead
/// of being read wrongly or silently ignored.
pub(crate) fn utf8_env(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> (HashMap<String, String>, Vec<String>) {
    let mut env = HashMap::new();
    let mut bad = Vec::new();
    for (k, v) in vars {
        match (k.into_string(), v.into_string()) {
            (Ok(k), Ok(v)) => {
                env.insert(k, v);
            }
            (k, _) => {
                let name = match k {
                    Ok(k) => k,
                    Err(k) => k.to_string_lossy().into_owned(),
                };
                if name.to_ascii_uppercase().starts_with("WEED_") {
                    bad.push(name);
                }
            }
        }
    }
    bad.sort();
    (env, bad)
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    /// A key set on this line of the file.
    Line(PathBuf, usize),
    Env(String),
    /// Set by this command-line flag (`filer.backup`'s flags stand for keys).
    Flag(String),
    /// Not set anywhere; the file it belongs in.
    Missing(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Line(p, line) => write!(f, "{}:{line}", p.display()),
            Origin::Env(v) => write!(f, "environment variable {v}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Missing(file) => write!(f, "{file}"),
        }
    }
}

/// One configuration problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub origin: Origin,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: {}: {}", self.origin, self.key, self.message)
        }
    }
}

/// Every problem found, reported together.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<Problem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "configuration has {n} problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

/// How resolving learns whether a file the settings name exists: the real file system
/// for a loaded configuration, anything a test says for one built in memory. Resolving
/// itself never touches the disk.
#[derive(Clone, Copy)]
pub(crate) struct FileCheck(pub fn(&Path) -> bool);

impl Default for FileCheck {
    fn default() -> Self {
        FileCheck(|p| p.is_file())
    }
}

impl std::fmt::Debug for FileCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileCheck")
    }
}

/// The merged key space.
#[derive(Debug, Clone, Default)]
pub(crate) struct RawConfig {
    /// Which file each logical name was loaded from.
    pub files: Vec<(String, PathBuf)>,
    values: HashMap<String, (toml::Value, PathBuf)>,
    /// The line each key was set on, in the file its value came from.
    lines: HashMap<String, usize>,
    env: HashMap<String, String>,
    /// Keys set by command-line flags, with the flag: these win over the environment and
    /// the files.
    flags: HashMap<String, (toml::Value, String)>,
    /// Whether a named file exists (see [`FileCheck`]).
    pub file_check: FileCheck,
    /// See [`Place::strict`].
    pub strict: bool,
}

impl RawConfig {
    /// Find, parse and merge the three files.
    pub(crate) fn load(opts: &LoadOptions) -> Result<RawConfig, ConfigErrors> {
        let mut raw = RawConfig {
            env: opts.env.clone(),
            strict: opts.strict,
            ..Default::default()
        };
        let mut problems: Vec<Problem> = opts
            .bad_env
            .iter()
            .map(|name| Problem {
                origin: Origin::Env(name.clone()),
                key: String::new(),
                message: "is not valid UTF-8, so it cannot be read as a setting".into(),
            })
            .collect();
        for name in FILES {
            if name == "notification" && opts.without_notification {
                continue;
            }
            let given = opts
                .replication_file
                .as_ref()
                .filter(|_| name == "replication");
            let found = if let Some(given) = given {
                let f = opts.cwd.join(given);
                if !f.is_file() {
                    problems.push(Problem {
                        origin: Origin::File(f),
                        key: String::new(),
                        message: "no such file (given with -config)".into(),
                    });
                    continue;
                }
                Some(f)
            } else {
                opts.search_dirs(name)
                    .into_iter()
                    .map(|d| d.join(format!("{name}.toml")))
                    .find(|p| p.is_file())
            };
            let Some(path) = found else {
                if name == "replication" {
                    let dirs: Vec<String> = opts
                        .search_dirs(name)
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect();
                    problems.push(Problem {
                        origin: Origin::Missing(format!("{name}.toml")),
                        key: String::new(),
                        message: format!(
                            "not found in any of {}; create one with `replicate scaffold -config={name} -output=.`",
                            dirs.join(", ")
                        ),
                    });
                }
                continue;
            };
            match std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| {
                    text.parse::<toml::Table>()
                        .map_err(|e| e.to_string().trim_end().replace('\n', " "))
                }) {
                Ok(table) => {
                    let mut values = HashMap::new();
                    flatten("", &toml::Value::Table(table), &path, &mut values);
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let lines = key_lines(&text);
                    // A line number always belongs to the file the value came from.
                    for (key, value) in values {
                        match lines.get(&key) {
                            Some(&line) => raw.lines.insert(key.clone(), line),
                            None => raw.lines.remove(&key),
                        };
                        raw.values.insert(key, value);
                    }
                    raw.files.push((name.to_string(), path));
                }
                Err(e) => problems.push(Problem {
                    origin: Origin::File(path),
                    key: String::new(),
                    message: format!("cannot be read as TOML: {e}"),
                }),
            }
        }
        if problems.is_empty() {
            Ok(raw)
        } else {
            Err(ConfigErrors(problems))
        }
    }

    /// Build from TOML text standing in for the merged files (tests).
    #[cfg(test)]
    pub(crate) fn from_toml(text: &str, env: HashMap<String, String>) -> RawConfig {
        let mut raw = RawConfig {
            env,
            ..Default::default()
        };
        let table: toml::Table = text.parse().expect("test TOML parses");
        flatten(
            "",
            &toml::Value::Table(table),
            Path::new("replication.toml"),
            &mut raw.values,
        );
        raw
    }

    /// The environment variable that overrides `key`.
    pub(crate) fn env_name(key: &str) -> String {
        format!("WEED_{}", key.replace('.', "_").to_uppercase())
    }

    /// The value of `key` (environment first), with where it came from. An empty
    /// variable counts as unset, as with upstream's viper (`AllowEmptyEnv` off): an
    /// empty `WEED_SINK_LOCAL_ENABLED=` must not turn off the sink the file enables.
    pub(crate) fn get(&self, key: &str) -> Option<(toml::Value, Origin)> {
        if let Some((v, flag)) = self.flags.get(&key.to_lowercase()) {
            return Some((v.clone(), Origin::Flag(flag.clone())));
        }
        let var = Self::env_name(key);
        if let Some(v) = self.env.get(&var)
            && !v.is_empty()
        {
            return Some((toml::Value::String(v.clone()), Origin::Env(var)));
        }
        let key = key.to_lowercase();
        let (v, path) = self.values.get(&key)?;
        let origin = match self.lines.get(&key) {
            Some(&line) => Origin::Line(path.clone(), line),
            None => Origin::File(path.clone()),
        };
        Some((v.clone(), origin))
    }

    /// Let the flag `flag` set `key`, over the environment and the files.
    pub(crate) fn set_flag(&mut self, key: &str, value: toml::Value, flag: &str) {
        self.flags
            .insert(key.to_lowercase(), (value, flag.to_string()));
    }

    /// Whether a file or the environment sets `key` (flags left aside).
    pub(crate) fn set_outside_flags(&self, key: &str) -> bool {
        let var = Self::env_name(key);
        self.env.get(&var).is_some_and(|v| !v.is_empty())
            || self.values.contains_key(&key.to_lowercase())
    }

    /// Every key set in a file (lower case), with the file and the line it is on.
    pub(crate) fn entries(&self) -> Vec<(&str, &Path, Option<usize>)> {
        let mut out: Vec<(&str, &Path, Option<usize>)> = self
            .values
            .iter()
            .map(|(k, (_, p))| (k.as_str(), p.as_path(), self.lines.get(k).copied()))
            .collect();
        out.sort_by(|a, b| {
            (a.1, a.2.unwrap_or(usize::MAX), a.0).cmp(&(b.1, b.2.unwrap_or(usize::MAX), b.0))
        });
        out
    }

    /// The file a missing key belongs in, for messages.
    pub(crate) fn home_of(&self, key: &str) -> Origin {
        let name = match key.split('.').next().unwrap_or("") {
            "notification" => "notification",
            "grpc" | "jwt" | "https" | "s3" => "security",
            _ => "replication",
        };
        match self.files.iter().find(|(n, _)| n == name) {
            Some((_, p)) => Origin::File(p.clone()),
            None => Origin::Missing(format!("{name}.toml")),
        }
    }
}

/// The line (1-based) each `key = value` of a TOML text is on, by its full dotted key in
/// lower case, for messages. A plain scan: table headers set the prefix; keys inside
/// multi-line strings or inline tables are not found (their messages have no line).
fn key_lines(text: &str) -> HashMap<String, usize> {
    let unquote = |k: &str| -> String {
        k.split('.')
            .map(|p| p.trim().trim_matches('"').trim_matches('\'').to_lowercase())
            .collect::<Vec<_>>()
            .join(".")
    };
    let mut out = HashMap::new();
    let mut prefix = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_start_matches('[');
            if let Some((name, _)) = header.split_once(']') {
                prefix = unquote(name);
            }
            continue;
        }
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        let key = unquote(key);
        if key.is_empty() || key.contains(' ') {
            continue;
        }
        let full = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        out.entry(full).or_insert(i + 1);
    }
    out
}

/// Every leaf of a TOML table with its full dotted key, as written.
pub(crate) fn leaves(prefix: &str, v: &toml::Value, f: &mut dyn FnMut(String, &toml::Value)) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&key, v, f);
            }
        }
        other => f(prefix.to_string(), other),
    }
}

/// The leaves of a file's table, by lower-case key, with the file they came from.
fn flatten(
    prefix: &str,
    v: &toml::Value,
    path: &Path,
    out: &mut HashMap<String, (toml::Value, PathBuf)>,
) {
    leaves(prefix, v, &mut |key, value| {
        out.insert(key.to_lowercase(), (value.clone(), path.to_path_buf()));
    });
}

/// Typed access to the key space that records every problem instead of stopping.
pub(crate) struct Reader<'a> {
    raw: &'a RawConfig,
    pub problems: Vec<Problem>,
    /// Every key asked for (lower case), so that none of them is called unknown.
    pub read: std::cell::RefCell<std::collections::HashSet<String>>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(raw: &'a RawConfig) -> Self {
        Reader {
            raw,
            problems: Vec::new(),
            read: Default::default(),
        }
    }

    /// An environment variable from the environment the configuration was loaded with
    /// (never the process's own at resolve time, so resolving stays pure); `None` when
    /// unset or empty.
    pub(crate) fn env(&self, name: &str) -> Option<String> {
        self.raw.env.get(name).filter(|v| !v.is_empty()).cloned()
    }

    /// Whether the file at `path` exists, as the configuration's [`FileCheck`] says.
    pub(crate) fn is_file(&self, path: &Path) -> bool {
        (self.raw.file_check.0)(path)
    }

    /// The raw value of `key`, noting that it was asked for.
    fn get(&self, key: &str) -> Option<(toml::Value, Origin)> {
        self.read.borrow_mut().insert(key.to_lowercase());
        self.raw.get(key)
    }

    /// Record a problem with `key`, naming where it was set (or where it belongs).
    pub(crate) fn problem(&mut self, key: &str, message: impl Into<String>) {
        let origin = self
            .raw
            .get(key)
            .map(|(_, o)| o)
            .unwrap_or_else(|| self.raw.home_of(key));
        self.problems.push(Problem {
            origin,
            key: key.to_string(),
            message: message.into(),
        });
    }

    /// The names of the tables directly under section `prefix` (lower case, sorted):
    /// `backup` for keys `prefix.backup.*`.
    pub(crate) fn subsections(&self, prefix: &str) -> Vec<String> {
        let head = format!("{}.", prefix.to_lowercase());
        let mut names: Vec<String> = self
            .raw
            .entries()
            .into_iter()
            .filter_map(|(key, _, _)| key.strip_prefix(&head)?.split_once('.'))
            .map(|(name, _)| name.to_string())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    pub(crate) fn is_set(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub(crate) fn string(&mut self, key: &str, default: &str) -> String {
        match self.get(key) {
            None => default.to_string(),
            Some((toml::Value::String(s), _)) => s,
            Some((toml::Value::Integer(i), _)) => i.to_string(),
            Some((toml::Value::Float(f), _)) => f.to_string(),
            Some((toml::Value::Boolean(b), _)) => b.to_string(),
            Some(_) => {
                self.problem(key, "must be a string");
                default.to_string()
            }
        }
    }

    pub(crate) fn bool(&mut self, key: &str, default: bool) -> bool {
        match self.get(key) {
            None => default,
            Some((toml::Value::Boolean(b), _)) => b,
            // As viper reads it: Go's strconv.ParseBool, and "" is false.
            Some((toml::Value::String(s), _)) if s.is_empty() => false,
            Some((toml::Value::String(s), _)) => crate::go::parse_bool(&s).unwrap_or_else(|| {
                self.problem(key, format!("must be true or false, got {:?}", cut(&s)));
                default
            }),
            Some((toml::Value::Integer(i), _)) => i != 0,
            Some(_) => {
                self.problem(key, "must be true or false");
                default
            }
        }
    }

    pub(crate) fn int(&mut self, key: &str, default: i64) -> i64 {
        match self.get(key) {
            None => default,
            Some((toml::Value::Integer(i), _)) => i,
            Some((toml::Value::String(s), _)) if s.trim().is_empty() => default,
            Some((toml::Value::String(s), _)) => s.trim().parse().unwrap_or_else(|_| {
                self.problem(key, format!("must be a whole number, got {:?}", cut(&s)));
                default
            }),
            Some(_) => {
                self.problem(key, "must be a whole number");
                default
            }
        }
    }

    /// A non-negative integer.
    pub(crate) fn count(&mut self, key: &str, default: u64) -> u64 {
        let v = self.int(key, default as i64);
        if v < 0 {
            self.problem(key, format!("must not be negative, got {v}"));
            return default;
        }
        v as u64
    }

    /// A list: a TOML array, or a string split on whitespace (commas are not separators).
    pub(crate) fn list(&mut self, key: &str) -> Vec<String> {
        match self.get(key) {
            None => Vec::new(),
            Some((toml::Value::String(s), _)) => s.split_whitespace().map(String::from).collect(),
            Some((toml::Value::Array(items), _)) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        toml::Value::String(s) => out.push(s),
                        other => {
                            self.problem(
                                key,
                                format!(
                                    "list items must be strings, got {}",
                                    cut(&other.to_string())
                                ),
                            );
                        }
                    }
                }
                out
            }
            Some(_) => {
                self.problem(
                    key,
                    "must be a list of strings or a whitespace-separated string",
                );
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
    }

    fn opts(cwd: &Path) -> LoadOptions {
        LoadOptions {
            cwd: cwd.to_path_buf(),
            ..Default::default()
        }
    }

    #[test]
    fn keys_know_their_line() {
        let text = "# c\n[sink.local]\nenabled = true\n\"Directory\" = \"/x\"\n[source.filer]\nhosts = [\n  \"a=b\",\n]\ngrpcAddress = 'x'\n";
        let lines = key_lines(text);
        assert_eq!(lines.get("sink.local.enabled"), Some(&3));
        assert_eq!(lines.get("sink.local.directory"), Some(&4));
        assert_eq!(lines.get("source.filer.grpcaddress"), Some(&9));
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "replication", text);
        let raw = RawConfig::load(&opts(d.path())).unwrap();
        let (_, origin) = raw.get("sink.local.directory").unwrap();
        assert_eq!(
            origin.to_string(),
            format!("{}:4", d.path().join("replication.toml").display())
        );
    }

    #[test]
    fn merges_files_case_insensitively_later_files_win() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "replication",
            "[source.filer]\ngrpcAddress = \"a:1\"\n[sink.local]\nenabled = true\n",
        );
        write(
            d.path(),
            "notification",
            "[SINK.local]\nENABLED = false\n[notification.kafka]\nhosts = \"h1 h2\"\n",
        );
        let raw = RawConfig::load(&opts(d.path())).unwrap();
        let mut r = Reader::new(&raw);
        assert_eq!(r.string("source.filer.GRPCADDRESS", ""), "a:1");
        assert!(
            !r.bool("sink.local.enabled", true),
            "notification.toml is loaded after replication.toml"
        );
        assert_eq!(r.list("notification.kafka.hosts"), vec!["h1", "h2"]);
        assert!(r.problems.is_empty());
    }

    #[test]
    fn search_path_order_and_config_flag() {
        let cwd = tempfile::tempdir().unwrap();
        let cfg = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".seaweedfs")).unwrap();
        write(cwd.path(), "replication", "x = \"cwd\"");
        write(cfg.path(), "replication", "x = \"config_dir\"");
        write(
            &home.path().join(".seaweedfs"),
            "notification",
            "y = \"home\"",
        );
        let mut o = opts(cwd.path());
        o.home = Some(home.path().to_path_buf());
        o.config_dir = Some(cfg.path().to_path_buf());
        let raw = RawConfig::load(&o).unwrap();
        assert_eq!(Reader::new(&raw).string("x", ""), "config_dir");
        assert_eq!(Reader::new(&raw).string("y", ""), "home");

        let other = tempfile::tempdir().unwrap();
        write(other.path(), "replication", "x = \"flag\"");
        write(other.path(), "notification", "y = \"beside\"");
        o.replication_file = Some(other.path().join("replication.toml"));
        let raw = RawConfig::load(&o).unwrap();
        assert_eq!(Reader::new(&raw).string("x", ""), "flag");
        assert_eq!(
            Reader::new(&raw).string("y", ""),
            "beside",
            "other files are looked for beside -config first"
        );
    }

    #[test]
    fn env_overrides_any_key_and_is_named_in_problems() {
        let env = HashMap::from([
            ("WEED_SINK_LOCAL_ENABLED".to_string(), "true".to_string()),
            (
                "WEED_SOURCE_FILER_GRPCADDRESS".to_string(),
                "b:2".to_string(),
            ),
            (
                "WEED_NOTIFICATION_KAFKA_OFFSETSAVEINTERVALSECONDS".to_string(),
                "soon".to_string(),
            ),
        ]);
        let raw = RawConfig::from_toml("[source.filer]\ngrpcAddress = \"a:1\"", env);
        let mut r = Reader::new(&raw);
        assert!(r.bool("sink.local.enabled", false));
        assert_eq!(r.string("source.filer.grpcAddress", ""), "b:2");
        r.int("notification.kafka.offsetSaveIntervalSeconds", 0);
        assert_eq!(
            r.problems[0].to_string(),
            "environment variable WEED_NOTIFICATION_KAFKA_OFFSETSAVEINTERVALSECONDS: \
             notification.kafka.offsetSaveIntervalSeconds: must be a whole number, got \"soon\""
        );
    }

    #[test]
    fn empty_env_variables_count_as_unset() {
        let env = HashMap::from([
            ("WEED_SINK_LOCAL_ENABLED".to_string(), String::new()),
            ("WEED_SINK_LOCAL_DIRECTORY".to_string(), String::new()),
        ]);
        let raw = RawConfig::from_toml(
            "[sink.local]\nenabled = true\ndirectory = \"/replica\"",
            env,
        );
        let mut r = Reader::new(&raw);
        assert!(r.bool("sink.local.enabled", false));
        assert_eq!(r.string("sink.local.directory", ""), "/replica");
        assert!(r.problems.is_empty());
    }

    #[test]
    fn missing_and_broken_files_are_all_reported() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "security", "this is = = not toml");
        let err = RawConfig::load(&opts(d.path())).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("2 problems"), "{text}");
        assert!(
            text.contains("security.toml: cannot be read as TOML"),
            "{text}"
        );
        assert!(text.contains("replication.toml: not found"), "{text}");
        // The queue-less input (`subscribe = true`) needs no notification.toml.
        assert!(!text.contains("notification.toml"), "{text}");
    }
}
