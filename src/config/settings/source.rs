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
                    crate::config::cut(item)
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
    // host:port, or [v6]:port; a bare v6 address without brackets is ambiguous.
    let ok = addr.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && port.parse::<u16>().is_ok_and(|p| p > 0)
            && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')))
    });
    if !ok {
        r.problem(
            key,
            format!("{addr:?} is not host:port (a port is required)"),
        );
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
    };
    let data_center = r.string("source.filer.dataCenter", "");
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
    }
}
