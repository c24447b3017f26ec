//! Where a sink operation lands: the validated path under the sink's root, and the full
//! key as upstream prints it.

/// Where an operation lands, relative to the sink's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkKey {
    /// Validated components under the sink root (date directory first, if any).
    pub rel: Vec<String>,
    /// The full sink key as upstream would print it (`sink_dir` + rel).
    pub full: String,
}

impl SinkKey {
    pub(crate) fn new(sink_dir: &str, rel: Vec<String>) -> Self {
        let base = sink_dir.trim_end_matches('/');
        let full = if rel.is_empty() {
            if base.is_empty() {
                "/".to_string()
            } else {
                base.to_string()
            }
        } else {
            format!("{base}{}", crate::path::join(&rel))
        };
        SinkKey { rel, full }
    }

    /// The parent key (the root's parent is the root).
    pub(crate) fn parent(&self, sink_dir: &str) -> SinkKey {
        let mut rel = self.rel.clone();
        rel.pop();
        SinkKey::new(sink_dir, rel)
    }

    pub(crate) fn is_root(&self) -> bool {
        self.rel.is_empty()
    }
}
