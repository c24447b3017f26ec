//! Decoding of the `EventNotification` a filer publishes for each metadata change.

use crate::pb::EventNotification;
use prost::Message;

/// An event as read from a queue: the queue key (a full filer path) and the payload,
/// decoded once, the first time anyone asks (see [`RawEvent::notification`]): the lane
/// that orders events and the pipeline that applies them read the same decoding.
#[derive(Debug, Clone)]
pub struct RawEvent {
    pub key: String,
    pub payload: bytes::Bytes,
    /// Why the message is not an event, when its input found out while unwrapping it (an
    /// escaped key that does not unescape, say); such a message is parked as a bad one.
    pub defect: Option<String>,
    decoded: std::sync::OnceLock<Result<EventNotification, DecodeError>>,
}

impl RawEvent {
    pub fn new(key: impl Into<String>, payload: impl Into<bytes::Bytes>) -> Self {
        RawEvent {
            key: key.into(),
            payload: payload.into(),
            defect: None,
            decoded: std::sync::OnceLock::new(),
        }
    }

    /// The event a filer would publish for `ev` under `key` (synthesized events: backfill,
    /// verify's repairs, the metadata log); nothing is decoded again.
    pub(crate) fn from_notification(key: impl Into<String>, ev: EventNotification) -> Self {
        let event = Self::new(key, ev.encode_to_vec());
        let _ = event.decoded.set(Ok(ev));
        event
    }

    /// The event a filer would publish had `entry` just been created in `dir`.
    pub(crate) fn created(dir: &str, entry: &crate::pb::Entry) -> Self {
        Self::from_notification(
            full_path(dir, entry),
            EventNotification {
                new_entry: Some(entry.clone()),
                new_parent_path: dir.to_string(),
                ..Default::default()
            },
        )
    }

    /// The event a filer would publish had the file at `path` just been deleted.
    pub(crate) fn deleted(path: &str) -> Self {
        let name = path.rsplit('/').next().unwrap_or_default().to_string();
        Self::from_notification(
            path,
            EventNotification {
                old_entry: Some(crate::pb::Entry {
                    name,
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    }

    /// The payload as an `EventNotification`, decoded on the first call only.
    pub(crate) fn notification(&self) -> Result<&EventNotification, &DecodeError> {
        self.decoded.get_or_init(|| decode(&self.payload)).as_ref()
    }
}

// Which events may not run at once: those whose paths are related (see `crate::lane`).

/// The filer paths an event touches: its key, and the new path of a rename.
pub fn paths_of(raw: &RawEvent) -> Vec<String> {
    let Ok(ev) = raw.notification() else {
        return Vec::new();
    };
    let mut paths = vec![raw.key.trim_end_matches('/').to_string()];
    if let (Some(_), Some(new)) = (&ev.old_entry, &ev.new_entry)
        && !ev.new_parent_path.is_empty()
    {
        let to = format!("{}/{}", ev.new_parent_path.trim_end_matches('/'), new.name);
        if to != paths[0] {
            paths.push(to);
        }
    }
    paths
}

/// `a` equals `b`, or one is under the other.
pub(crate) fn related(a: &str, b: &str) -> bool {
    let under = |child: &str, parent: &str| {
        parent.is_empty()
            || (child.len() > parent.len()
                && child.starts_with(parent)
                && child.as_bytes()[parent.len()] == b'/')
    };
    a == b || under(a, b) || under(b, a)
}

/// Whether events on paths `a` and on paths `b` must not run at once.
pub(crate) fn conflict(a: &[String], b: &[String]) -> bool {
    a.iter().any(|x| b.iter().any(|y| related(x, y)))
}

/// The full path of `entry` in directory `dir` (an event's key).
pub(crate) fn full_path(dir: &str, entry: &crate::pb::Entry) -> String {
    format!("{}/{}", dir.trim_end_matches('/'), entry.name)
}

/// Why an event could not be decoded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is not a valid EventNotification protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

/// Decode a queue payload into an `EventNotification`.
pub fn decode(payload: &[u8]) -> Result<EventNotification, DecodeError> {
    Ok(EventNotification::decode(payload)?)
}

/// What kind of change an event describes, for logging and counting.
pub(crate) fn kind(ev: &EventNotification) -> &'static str {
    match (&ev.old_entry, &ev.new_entry) {
        (None, Some(_)) => "add",
        (Some(_), None) => "delete",
        (Some(_), Some(_)) => "modify",
        (None, None) => "empty",
    }
}

/// The change an event describes, for metrics: `create`, `update`, `delete` or `rename`
/// (`key` is the event's key, the old path of a rename).
pub(crate) fn change(key: &str, ev: &EventNotification) -> &'static str {
    match (&ev.old_entry, &ev.new_entry) {
        (None, Some(_)) => "create",
        (Some(_), None) => "delete",
        (Some(old), Some(new)) => {
            let parent = key.rsplit_once('/').map_or("", |(d, _)| d);
            let moved = !ev.new_parent_path.is_empty()
                && ev.new_parent_path.trim_end_matches('/') != parent.trim_end_matches('/');
            if moved || old.name != new.name {
                "rename"
            } else {
                "update"
            }
        }
        (None, None) => "invalid",
    }
}

/// Go's `os.FileMode` bits as the filer stores them.
pub mod mode {
    pub const DIR: u32 = 1 << 31;
    pub(crate) const SYMLINK: u32 = 1 << 27;
    pub(crate) const SETUID: u32 = 1 << 23;
    pub(crate) const SETGID: u32 = 1 << 22;
    pub(crate) const STICKY: u32 = 1 << 20;

    /// Convert Go mode bits to a Unix permission mode (rwx plus setuid, setgid, sticky).
    pub(crate) fn to_unix(go_mode: u32) -> u32 {
        let mut m = go_mode & 0o777;
        if go_mode & SETUID != 0 {
            m |= 0o4000;
        }
        if go_mode & SETGID != 0 {
            m |= 0o2000;
        }
        if go_mode & STICKY != 0 {
            m |= 0o1000;
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::Entry;

    #[test]
    fn decodes_what_it_encodes_and_rejects_garbage() {
        let ev = EventNotification {
            new_entry: Some(Entry {
                name: "a.txt".into(),
                ..Default::default()
            }),
            new_parent_path: "/data".into(),
            signatures: vec![7, -3],
            ..Default::default()
        };
        let back = decode(&ev.encode_to_vec()).unwrap();
        assert_eq!(back, ev);
        assert_eq!(kind(&back), "add");
        assert!(decode(&[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn go_mode_bits_map_to_unix() {
        assert_eq!(mode::to_unix(0o644), 0o644);
        assert_eq!(mode::to_unix(mode::DIR | 0o771), 0o771);
        assert_eq!(mode::to_unix(mode::SETUID | mode::STICKY | 0o755), 0o5755);
    }
}
