//! `[source.filer]`: the source cluster (the metadata-log input's keys are the input's).

use super::*;

/// `[source.filer]`.
#[derive(Debug, Clone)]
pub(crate) struct SourceSettings {
    pub grpc_address: String,
    /// Normalised, absolute.
    pub directory: String,
    /// `directory` as path components (validated).
    pub directory_parts: Vec<String>,
    pub exclude_directories: Vec<String>,
    /// `exclude_directories` as path components (validated).
    pub exclude_parts: Vec<Vec<String>>,
    /// `excludeFileNames` and `excludePathPatterns`.
    pub filter: crate::replicate::filter::Filter,
    pub data_center: String,
    /// `filerProxy`: the filer's HTTP `host:port`, to read chunks through.
    pub proxy: Option<String>,
}

/// Comma-separated wildcards, as upstream's `-filerExcludeFileNames` and
/// `-filerExcludePathPatterns` take them (empty items ignored). A `/` cannot occur in a
/// name, so a pattern with one would never match: a problem, not a silent no-op.
fn wildcards(r: &mut Reader, key: &str) -> Vec<crate::replicate::filter::Wildcard> {
    let text = r.string(key, "");
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        if item.contains('/') {
            r.problem(
                key,
                format!(
                    "{:?} contains '/': patterns match one name at a time \
                     (use excludeDirectories for a path)",
                    crate::text::cut(item)
                ),
            );
            continue;
        }
        out.push(crate::replicate::filter::Wildcard::new(item));
    }
    out
}

pub(super) fn check_grpc_address(r: &mut Reader, key: &str, addr: &str) {
    if addr.is_empty() {
        r.problem(
            key,
            "is empty; set it to the filer's gRPC address, host:port (HTTP port + 10000)",
        );
        return;
    }
    check_host_port(r, key, addr);
}

/// `host:port`, or `[v6]:port`: the host and the port, if `addr` is one.
fn host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    // A bare v6 address without brackets is ambiguous.
    (!host.is_empty() && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']'))))
        .then_some((host, port))
}

fn check_host_port(r: &mut Reader, key: &str, addr: &str) {
    if host_port(addr).is_none() {
        r.problem(
            key,
            format!("{addr:?} is not host:port (a port is required)"),
        );
    }
}

/// `filerProxy` and `httpAddress`: the filer's HTTP address to read chunks through, by
/// default SeaweedFS's convention (the gRPC port less 10000, as `weed` derives them).
fn resolve_proxy(r: &mut Reader, grpc_address: &str) -> Option<String> {
    let proxy = r.bool("source.filer.filerProxy", false);
    let http = r.string("source.filer.httpAddress", "");
    if !http.is_empty() {
        check_host_port(r, "source.filer.httpAddress", &http);
        if !proxy {
            r.problem(
                "source.filer.httpAddress",
                "is set, but only reads through the filer use it; set filerProxy = true too, or remove it",
            );
        }
    }
    if !proxy {
        return None;
    }
    if !http.is_empty() {
        return Some(http);
    }
    match host_port(grpc_address) {
        Some((host, port)) if port > 10000 => Some(format!("{host}:{}", port - 10000)),
        // The gRPC address's own problem is reported already.
        None => None,
        Some(_) => {
            r.problem(
                "source.filer.filerProxy",
                format!(
                    "the filer's HTTP port cannot be told from grpcAddress {grpc_address:?} \
                     (its port is not above 10000); set httpAddress"
                ),
            );
            None
        }
    }
}

/// A regular expression over names (`-filerExcludeFileName`); empty: none.
fn name_regexp(r: &mut Reader, key: &str) -> Option<crate::replicate::filter::NameRegexp> {
    let text = r.string(key, "");
    if text.is_empty() {
        return None;
    }
    match regex::Regex::new(&text) {
        Ok(re) => Some(crate::replicate::filter::NameRegexp(re)),
        Err(e) => {
            let why = e.to_string().lines().last().unwrap_or_default().to_string();
            r.problem(
                key,
                format!(
                    "{:?} is not a regular expression: {why}",
                    crate::text::cut(&text)
                ),
            );
            None
        }
    }
}

pub(super) fn resolve_source(r: &mut Reader) -> SourceSettings {
    let grpc_address = r.string("source.filer.grpcAddress", "");
    check_grpc_address(r, "source.filer.grpcAddress", &grpc_address);
    let dir_raw = r.string("source.filer.directory", "");
    let directory = if dir_raw.is_empty() {
        r.problem("source.filer.directory", "is empty, which would replicate nothing; set the filer directory to replicate, e.g. \"/buckets\"");
        "/".to_string()
    } else {
        normalize_dir(&dir_raw).unwrap_or_else(|e| {
            r.problem(
                "source.filer.directory",
                format!("must be an absolute filer path without . or ..: {}", e.why),
            );
            "/".to_string()
        })
    };
    let mut exclude_directories = Vec::new();
    for ex in r.list("source.filer.excludeDirectories") {
        match normalize_dir(&ex) {
            Ok(d) => exclude_directories.push(d),
            Err(e) => r.problem(
                "source.filer.excludeDirectories",
                format!("{ex:?}: must be an absolute filer path: {}", e.why),
            ),
        }
    }
    let filter = crate::replicate::filter::Filter {
        file_names: wildcards(r, "source.filer.excludeFileNames"),
        path_patterns: wildcards(r, "source.filer.excludePathPatterns"),
        file_name_regexp: name_regexp(r, "source.filer.excludeFileNameRegexp"),
    };
    let data_center = r.string("source.filer.dataCenter", "");
    let proxy = resolve_proxy(r, &grpc_address);
    // Normalised above, so every one of them splits into components.
    let parts = |d: &str| components(d).unwrap_or_default();
    SourceSettings {
        grpc_address,
        directory_parts: parts(&directory),
        directory,
        exclude_parts: exclude_directories.iter().map(|d| parts(d)).collect(),
        exclude_directories,
        filter,
        data_center,
        proxy,
    }
}
