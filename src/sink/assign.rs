//! File ids for a filer sink's uploads, assigned in batches.
//!
//! One `AssignVolume` with `count = n` grants n consecutive needle keys on one volume: the
//! volume server takes `<fid>_<i>` as the i-th after the first (and a write JWT for the
//! first covers them all), and the needle it writes has key + i, which is the file id the
//! entry records. Asking once for many files saves the target filer and its master one
//! round trip each per chunk.
//!
//! Where a chunk is placed depends on its path: the target's `filer.conf` rules whose
//! location prefix matches it, and the bucket, for a path under the buckets folder. A
//! grant serves only paths with the same matching rules and bucket (the rules are read
//! again every [`RULES_TTL`]; while they cannot be read, each path is its own class, so a
//! grant serves the chunks of one file). A grant older than [`GRANT_TTL`] is not used: its
//! volume may have filled up and its JWT (ten seconds by default) expired.

use crate::filer::{FilerSource, fileid};
use crate::pb::{self, seaweed_filer_client::SeaweedFilerClient};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// File ids asked for at once.
const BATCH: i32 = 64;
const GRANT_TTL: Duration = Duration::from_secs(5);
const RULES_TTL: Duration = Duration::from_secs(30);
/// Where the filer keeps its path rules.
const FILER_CONF: &str = "/etc/seaweedfs/filer.conf";

/// Where one chunk goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fid {
    /// The file id the entry records.
    pub fid: String,
    /// The volume server's `host:port` and the id to upload to (`<fid>_<i>` in a batch).
    pub url: String,
    pub upload_id: String,
    /// The write JWT, if the target signs them.
    pub auth: String,
}

/// Why no file id could be had.
#[derive(Debug)]
pub(crate) enum AssignError {
    Rpc(tonic::Status),
    /// The filer answered with an error, or without a file id or location.
    Refused(String),
}

/// What every assignment asks for, whatever the path.
#[derive(Debug, Clone, Default)]
pub(crate) struct Placement {
    pub collection: String,
    pub replication: String,
    pub ttl_sec: i32,
    pub data_center: String,
    pub disk: String,
}

/// The ids left of one assignment.
#[derive(Debug, Clone)]
struct Grant {
    url: String,
    volume_id: u32,
    key: u64,
    cookie: u32,
    count: u32,
    next: u32,
    auth: String,
    at: Instant,
}

impl Grant {
    fn take(&mut self) -> Option<Fid> {
        if self.next >= self.count || self.at.elapsed() > GRANT_TTL {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let first = fileid::format(&pb::FileId {
            volume_id: self.volume_id,
            file_key: self.key,
            cookie: self.cookie,
        });
        let fid = fileid::format(&pb::FileId {
            volume_id: self.volume_id,
            file_key: self.key.checked_add(u64::from(i))?,
            cookie: self.cookie,
        });
        Some(Fid {
            upload_id: if i == 0 {
                first
            } else {
                format!("{first}_{i}")
            },
            fid,
            url: self.url.clone(),
            auth: self.auth.clone(),
        })
    }
}

/// The target's placement rules, as far as they decide which paths may share a grant.
#[derive(Debug, Default)]
struct Rules {
    read_at: Option<Instant>,
    /// Location prefixes of `filer.conf`; `None` while they cannot be read.
    prefixes: Option<Vec<String>>,
    /// The filer's buckets folder (`/buckets`).
    buckets: String,
}

impl Rules {
    /// The paths that may share a grant with `path` have the same class.
    fn class(&self, path: &str) -> Vec<String> {
        let Some(prefixes) = &self.prefixes else {
            return vec![path.to_string()];
        };
        let mut class: Vec<String> = prefixes
            .iter()
            .filter(|p| path.starts_with(p.as_str()))
            .cloned()
            .collect();
        let under = format!("{}/", self.buckets.trim_end_matches('/'));
        if let Some(rest) = path.strip_prefix(&under) {
            class.push(format!(
                "bucket:{}",
                rest.split('/').next().unwrap_or_default()
            ));
        }
        class
    }
}

/// The location prefixes of a `filer.conf` (protobuf JSON: `locations[].locationPrefix`).
fn prefixes_of(conf: &[u8]) -> Option<Vec<String>> {
    if conf.iter().all(u8::is_ascii_whitespace) {
        return Some(vec![]);
    }
    let v: serde_json::Value = serde_json::from_slice(conf).ok()?;
    let Some(locations) = v.get("locations") else {
        return Some(vec![]);
    };
    locations
        .as_array()?
        .iter()
        .map(|l| {
            l.get("locationPrefix")
                .or_else(|| l.get("location_prefix"))
                .and_then(|p| p.as_str())
                .map(String::from)
        })
        .collect()
}

pub(crate) struct Assigner {
    target: SeaweedFilerClient<Channel>,
    reader: Arc<FilerSource>,
    placement: Placement,
    grants: std::sync::Mutex<HashMap<Vec<String>, Grant>>,
    rules: tokio::sync::Mutex<Rules>,
}

impl Assigner {
    pub(crate) fn new(
        target: SeaweedFilerClient<Channel>,
        reader: Arc<FilerSource>,
        placement: Placement,
    ) -> Self {
        Assigner {
            target,
            reader,
            placement,
            grants: Default::default(),
            rules: Default::default(),
        }
    }

    async fn class(&self, path: &str) -> Vec<String> {
        let mut rules = self.rules.lock().await;
        if rules.read_at.is_none_or(|at| at.elapsed() > RULES_TTL) {
            rules.read_at = Some(Instant::now());
            let buckets = self
                .target
                .clone()
                .get_filer_configuration(pb::GetFilerConfigurationRequest {})
                .await
                .map(|r| r.into_inner().dir_buckets);
            let conf = self.reader.lookup_entry(FILER_CONF).await;
            (rules.buckets, rules.prefixes) = match (buckets, conf) {
                (Ok(buckets), Ok(None)) => (buckets, Some(vec![])),
                // Rules too large to be kept inline are not read: no grant is shared.
                (Ok(buckets), Ok(Some(e))) if e.chunks.is_empty() => {
                    (buckets, prefixes_of(&e.content))
                }
                _ => (String::new(), None),
            };
            if rules.prefixes.is_none() {
                tracing::debug!(
                    "cannot read the target's path rules; file ids are asked for file by file"
                );
            }
        }
        rules.class(path)
    }

    /// A file id for a chunk of `path` of `size` bytes.
    pub(crate) async fn next(&self, path: &str, size: u64) -> Result<Fid, AssignError> {
        let class = self.class(path).await;
        if let Some(fid) = self
            .grants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&class)
            .and_then(Grant::take)
        {
            return Ok(fid);
        }
        let answer = self
            .target
            .clone()
            .assign_volume(pb::AssignVolumeRequest {
                count: BATCH,
                collection: self.placement.collection.clone(),
                replication: self.placement.replication.clone(),
                ttl_sec: self.placement.ttl_sec,
                data_center: self.placement.data_center.clone(),
                disk_type: self.placement.disk.clone(),
                path: path.to_string(),
                expected_data_size: size,
                ..Default::default()
            })
            .await
            .map_err(AssignError::Rpc)?
            .into_inner();
        if !answer.error.is_empty() {
            return Err(AssignError::Refused(answer.error));
        }
        let Some(loc) = answer.location else {
            return Err(AssignError::Refused("no location in the answer".into()));
        };
        let Some(id) = fileid::parse(&answer.file_id) else {
            return Err(AssignError::Refused(format!(
                "not a file id: {:?}",
                crate::text::cut(&answer.file_id)
            )));
        };
        let mut grant = Grant {
            url: loc.url,
            volume_id: id.volume_id,
            key: id.file_key,
            cookie: id.cookie,
            count: u32::try_from(answer.count.clamp(1, BATCH)).unwrap_or(1),
            next: 0,
            auth: answer.auth,
            at: Instant::now(),
        };
        let fid = grant
            .take()
            .ok_or_else(|| AssignError::Refused("the grant is empty".into()))?;
        let mut grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        // Spent and expired grants go, so that classes of one path each (rules that
        // cannot be read) do not pile up.
        if grants.len() >= 256 {
            grants.retain(|_, g| g.next < g.count && g.at.elapsed() <= GRANT_TTL);
        }
        if grants.len() < 1024 {
            grants.insert(class, grant);
        }
        Ok(fid)
    }

    /// An upload with an id of this grant failed: the next chunk asks again (the volume
    /// may have gone read-only or away).
    pub(crate) async fn forget(&self, path: &str) {
        let class = self.class(path).await;
        self.grants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&class);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(count: u32) -> Grant {
        Grant {
            url: "127.0.0.1:8080".into(),
            volume_id: 3,
            key: 0x0163_7037,
            cookie: 0xd6d6_d6d6,
            count,
            next: 0,
            auth: String::new(),
            at: Instant::now(),
        }
    }

    #[test]
    fn a_grant_hands_out_consecutive_keys_once_each() {
        let mut g = grant(3);
        let ids: Vec<Fid> = std::iter::from_fn(|| g.take()).collect();
        assert_eq!(ids.len(), 3);
        assert_eq!(ids[0].fid, "3,01637037d6d6d6d6");
        assert_eq!(ids[0].upload_id, "3,01637037d6d6d6d6");
        assert_eq!(ids[1].fid, "3,01637038d6d6d6d6");
        assert_eq!(ids[1].upload_id, "3,01637037d6d6d6d6_1");
        assert_eq!(ids[2].fid, "3,01637039d6d6d6d6");
        assert_eq!(ids[2].upload_id, "3,01637037d6d6d6d6_2");
        // Past the end of the key space: nothing, not a wrapped key.
        let mut top = grant(2);
        top.key = u64::MAX;
        assert!(top.take().is_some());
        assert!(top.take().is_none());
    }

    #[test]
    fn an_old_grant_is_not_used() {
        let mut g = grant(10);
        g.at = Instant::now() - GRANT_TTL - Duration::from_millis(1);
        assert!(g.take().is_none());
    }

    #[test]
    fn paths_share_a_grant_only_under_the_same_rules_and_bucket() {
        let rules = Rules {
            read_at: Some(Instant::now()),
            prefixes: Some(vec!["/data/hot/".into(), "/data/logs-".into()]),
            buckets: "/buckets".into(),
        };
        assert_eq!(rules.class("/data/a/f1"), rules.class("/data/b/f2"));
        assert_eq!(rules.class("/data/hot/f1"), rules.class("/data/hot/x/f2"));
        assert_ne!(rules.class("/data/hot/f1"), rules.class("/data/a/f1"));
        assert_ne!(rules.class("/data/logs-1"), rules.class("/data/other"));
        assert_eq!(rules.class("/buckets/b1/x"), rules.class("/buckets/b1/y/z"));
        assert_ne!(rules.class("/buckets/b1/x"), rules.class("/buckets/b2/x"));
        assert_ne!(rules.class("/buckets/b1/x"), rules.class("/data/x"));
        let unknown = Rules::default();
        assert_ne!(unknown.class("/data/a"), unknown.class("/data/b"));
    }

    #[test]
    fn filer_conf_prefixes_are_read_and_damage_is_not_trusted() {
        let conf = br#"{"version":0,"locations":[{"locationPrefix":"/a/","collection":"x"},{"location_prefix":"/b/"}]}"#;
        assert_eq!(prefixes_of(conf), Some(vec!["/a/".into(), "/b/".into()]));
        assert_eq!(prefixes_of(b"{\"version\":0}"), Some(vec![]));
        assert_eq!(prefixes_of(b"  \n"), Some(vec![]));
        assert_eq!(prefixes_of(b"{not json"), None);
        assert_eq!(prefixes_of(br#"{"locations":[{"collection":"x"}]}"#), None);
        assert_eq!(prefixes_of(br#"{"locations":"x"}"#), None);
    }
}
