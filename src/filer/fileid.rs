//! SeaweedFS file ids: `"<volume id>,<needle key hex><cookie hex>"`.

use crate::pb::{FileChunk, FileId};

/// The string id of a chunk ("vid,keycookie"), derived from `fid` when `file_id` is empty.
pub(crate) fn chunk_file_id(chunk: &FileChunk) -> Option<String> {
    if !chunk.file_id.is_empty() {
        return Some(chunk.file_id.clone());
    }
    chunk.fid.as_ref().map(format)
}

/// Format a `FileId` the way upstream does: the 8-byte big-endian key with its
/// leading zero bytes removed, then the 4-byte cookie, all lower-case hex.
pub(crate) fn format(fid: &FileId) -> String {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&fid.file_key.to_be_bytes());
    bytes[8..].copy_from_slice(&fid.cookie.to_be_bytes());
    let first = bytes[..8].iter().position(|b| *b != 0).unwrap_or(8);
    format!("{},{}", fid.volume_id, hex::encode(&bytes[first..]))
}

/// Parse `"vid,keycookie"` into a `FileId`.
pub(crate) fn parse(file_id: &str) -> Option<FileId> {
    let vid = volume_id(file_id)?;
    let rest = &file_id[vid.len() + 1..];
    let (key, cookie) = rest.split_at(rest.len() - 8);
    Some(FileId {
        volume_id: vid.parse().ok()?,
        file_key: u64::from_str_radix(key, 16).ok()?,
        cookie: u32::from_str_radix(cookie, 16).ok()?,
    })
}

/// The volume id part of a file id string (before the last comma).
pub(crate) fn volume_id(file_id: &str) -> Option<&str> {
    let (vid, rest) = file_id.rsplit_once(',')?;
    if vid.is_empty()
        || rest.len() <= 8
        || rest.len() > 24
        || !vid.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    if !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(vid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_id_falls_back_to_fid() {
        let c = FileChunk {
            fid: Some(FileId {
                volume_id: 3,
                file_key: 4,
                cookie: 0x6dbbed8d,
            }),
            ..Default::default()
        };
        assert_eq!(chunk_file_id(&c).as_deref(), Some("3,046dbbed8d"));
        let c = FileChunk {
            file_id: "5,01abcdef12".into(),
            ..c
        };
        assert_eq!(chunk_file_id(&c).as_deref(), Some("5,01abcdef12"));
    }

    #[test]
    fn formats_like_upstream() {
        assert_eq!(
            format(&FileId {
                volume_id: 3,
                file_key: 4,
                cookie: 0x6dbbed8d
            }),
            "3,046dbbed8d"
        );
        assert_eq!(
            format(&FileId {
                volume_id: 1,
                file_key: 0,
                cookie: 1
            }),
            "1,00000001"
        );
        assert_eq!(
            format(&FileId {
                volume_id: 7,
                file_key: 0x0102030405060708,
                cookie: 0xffffffff
            }),
            "7,0102030405060708ffffffff"
        );
    }

    #[test]
    fn parse_is_the_inverse_of_format() {
        for fid in [
            FileId {
                volume_id: 3,
                file_key: 4,
                cookie: 0x6dbbed8d,
            },
            FileId {
                volume_id: 70000,
                file_key: u64::MAX,
                cookie: u32::MAX,
            },
        ] {
            assert_eq!(parse(&format(&fid)), Some(fid));
        }
        assert_eq!(parse("3,zz6dbbed8d"), None);
        // Key 0 formats to the cookie alone, which upstream's parser rejects too (keys start at 1).
        assert_eq!(parse("1,00000001"), None);
    }

    #[test]
    fn parses_volume_ids() {
        assert_eq!(volume_id("3,046dbbed8d"), Some("3"));
        assert_eq!(volume_id("3,6dbbed8d"), None, "needs more than the cookie");
        assert_eq!(volume_id("x,046dbbed8d"), None);
        assert_eq!(volume_id("3,04zz"), None);
        assert_eq!(volume_id("nocomma"), None);
    }
}
